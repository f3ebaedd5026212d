//! A buffered TCP connection for the small protocol clients of `ferry
//! bench` (NATS, Redis): an output buffer written in one go, and an input
//! buffer that the protocol parses in place.

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Wire {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    pub input: BytesMut,
    /// Bytes to write at the next `flush`.
    pub out: Vec<u8>,
}

impl Wire {
    pub async fn connect(addr: &str) -> Result<Wire> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Wire {
            stream,
            input: BytesMut::with_capacity(64 * 1024),
            out: Vec::with_capacity(64 * 1024),
        })
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await.context("write")?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads what has arrived into `input`. Cancel-safe: bytes read are
    /// never lost.
    pub async fn fill(&mut self) -> Result<()> {
        if self.input.capacity() - self.input.len() < 16 * 1024 {
            self.input.reserve(64 * 1024);
        }
        if self
            .stream
            .read_buf(&mut self.input)
            .await
            .context("read")?
            == 0
        {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}

/// "scheme://host:port/..." or "host:port" -> "host:port".
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_urls() {
        assert_eq!(host_port("nats://127.0.0.1:4222", 4222), "127.0.0.1:4222");
        assert_eq!(host_port("redis://localhost/0", 6379), "localhost:6379");
        assert_eq!(host_port("redis://u:p@h:7000", 6379), "h:7000");
        assert_eq!(host_port("h:1", 2), "h:1");
    }
}
