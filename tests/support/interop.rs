//! The relay set-up of the interop tests: HTTPS with required client certificates in, the
//! durable queue, and destinations to real receivers.

use super::{ClientOptions, CorpusEvent, Relay, cert, eventlist, post_batch};

pub const HOST: &str = "test-cluster";

pub fn relay_config(destinations: &str) -> String {
    format!(
        r#"cluster_name = "{HOST}"
[listen]
address = "127.0.0.1:0"
tls_cert = "{crt}"
tls_key = "{key}"
client_ca = "{ca}"
client_auth = "required"
[syslog]
max_message_bytes = "1MiB"
[queue]
kind = "disk"
data_dir = "queue"
{destinations}"#,
        crt = cert("server.crt"),
        key = cert("server.key"),
        ca = cert("ca.crt"),
    )
}

pub fn tls_destination(name: &str, port: u16, framing: &str) -> String {
    format!(
        r#"
[[destination]]
name = "{name}"
url = "tls://127.0.0.1:{port}"
ca = "{ca}"
client_cert = "{crt}"
client_key = "{key}"
server_name = "localhost"
framing = "{framing}"
"#,
        ca = cert("ca.crt"),
        crt = cert("client.crt"),
        key = cert("client.key"),
    )
}

pub fn tcp_destination(name: &str, port: u16, framing: &str, with_certs: bool) -> String {
    let certs = if with_certs {
        format!(
            "ca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            cert("ca.crt"),
            cert("client.crt"),
            cert("client.key")
        )
    } else {
        String::new()
    };
    format!(
        "\n[[destination]]\nname = \"{name}\"\nurl = \"tcp://127.0.0.1:{port}\"\nframing = \"{framing}\"\n{certs}"
    )
}

/// Posts `events` in batches of 25, alternating HTTP/1.1 and HTTP/2; every answer must be 200.
pub async fn post_all(relay: &Relay, events: &[CorpusEvent]) {
    for (i, chunk) in events.chunks(25).enumerate() {
        let options = ClientOptions::https(Some(("client.crt", "client.key")), i % 2 == 1);
        let response = post_batch(relay.addr, &options, eventlist(chunk))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "batch {i}: {}", response.body);
        let expected: &[u8] = if i % 2 == 1 { b"h2" } else { b"http/1.1" };
        assert_eq!(response.alpn.as_deref(), Some(expected));
    }
}
