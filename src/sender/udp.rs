//! `udp://` (RFC 5426): one datagram per record, no connection and no acknowledgement, so a
//! record counts as delivered once the kernel took it. Records above `max_datagram_bytes`
//! are shortened by the apiserver's truncation rule, or dropped and counted.

use std::io;

use bytes::Bytes;
use tokio::net::UdpSocket;

use super::{Encoding, End, Session};
use crate::queue::Position;

/// A UDP receiver.
#[derive(Debug)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Format and size limit (the smaller of `max_message_bytes` and `max_datagram_bytes`);
    /// framing does not apply: one record per datagram.
    pub encoding: Encoding,
}

impl Target {
    /// Resolves the receiver and opens a socket connected to it.
    ///
    /// # Errors
    /// When the name does not resolve or the socket cannot be opened.
    pub async fn open(&self) -> Result<DatagramSession, End> {
        let target = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(End::Io)?
            .next()
            .ok_or_else(|| End::Io(io::Error::other("no address for the host")))?;
        let local: std::net::SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(End::Io)?;
        socket.connect(target).await.map_err(End::Io)?;
        Ok(DatagramSession {
            socket,
            encoding: self.encoding.clone(),
            sent: None,
        })
    }
}

/// A socket connected to the receiver.
pub struct DatagramSession {
    socket: UdpSocket,
    encoding: Encoding,
    /// The end of the last batch handed to the kernel, not yet confirmed.
    sent: Option<Position>,
}

impl Session for DatagramSession {
    async fn send(&mut self, records: &[Bytes], end: Position) -> Result<(), End> {
        let count = self.encoding.first_time(end);
        for record in records {
            let Some(datagram) = self.encoding.prepare(record, count) else {
                continue;
            };
            match self.socket.send(&datagram).await {
                Ok(_) => {}
                // An ICMP "port unreachable" from an earlier datagram; UDP cannot tell more.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::debug!(destination = %self.encoding.name, "receiver port unreachable");
                }
                Err(e) => return Err(End::Io(e)),
            }
        }
        self.sent = Some(end);
        Ok(())
    }

    async fn confirmed(&mut self) -> Result<Position, End> {
        match self.sent.take() {
            Some(position) => Ok(position),
            None => std::future::pending().await,
        }
    }

    async fn close(self) -> Result<Option<Position>, End> {
        Ok(self.sent)
    }

    async fn abort(self) {}
}
