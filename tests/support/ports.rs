//! Ports for receivers that cannot report a port they were given 0 for (rsyslog, syslog-ng,
//! HAProxy): a random port below the kernel's ephemeral range (so nothing the kernel picks for
//! port-0 binds or outgoing connections can take it), and a check that the listening socket
//! on it belongs to the process we started. On a clash the caller starts again with new ports;
//! no port is ever bound and released to be handed over.

use std::collections::HashSet;

/// `n` distinct random ports in 20000..32000.
pub fn pick(n: usize) -> Vec<u16> {
    let mut ports = HashSet::new();
    while ports.len() < n {
        ports.insert(fastrand::u16(20000..32000));
    }
    ports.into_iter().collect()
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4 or IPv6).
pub fn listening(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
    })
}

/// Inodes of the sockets in state LISTEN on `port`, from /proc/net/tcp and tcp6.
fn listening_inodes(port: u16) -> HashSet<String> {
    let hex_port = format!(":{port:04X}");
    let mut out = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is column 1, st column 3 (0A = LISTEN), inode column 9.
            if cols.len() > 9 && cols[1].ends_with(&hex_port) && cols[3] == "0A" {
                out.insert(cols[9].to_owned());
            }
        }
    }
    out
}

/// A loopback port where nothing listens, held for as long as the socket lives: a socket
/// bound but never listening, so connections to it are refused and no one else gets it.
pub fn closed() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}
