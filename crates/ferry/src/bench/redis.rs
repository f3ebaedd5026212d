//! `ferry bench redis`: Redis Streams as a durable queue, for the side by
//! side comparison (`scripts/bench-compare`). A small RESP2 client: each
//! queue is a stream with one consumer group; producers pipeline `XADD`
//! (acknowledged by the entry id, after the append-only file's fsync when
//! the server runs with `appendfsync always`); consumers `XREADGROUP`
//! `--prefetch` entries, and with the next read acknowledge and delete them
//! (`XACK` + `XDEL`, so that consumed entries leave memory as they leave a
//! queue).

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use clap::Args;
use serde_json::{Value, json};

use super::driver::{self, Consumer, Plan, Producer, Transport};
use super::wire::{Wire, host_port};

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Server to connect to.
    #[arg(
        long,
        env = "FERRY_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    url: String,
    #[command(flatten)]
    plan: Plan,
}

pub async fn run(args: RedisArgs) -> Result<bool> {
    let transport = Redis {
        addr: host_port(&args.url, 6379),
        streams: args.plan.names(),
        prefetch: args.plan.prefetch,
        fanout: args.plan.fanout,
    };
    driver::run(transport, &args.plan).await
}

const GROUP: &str = "ferry-bench";

struct Redis {
    addr: String,
    streams: Vec<String>,
    prefetch: u32,
    /// One stream (the first name) with a consumer group per queue.
    fanout: bool,
}

impl Redis {
    /// (stream, consumer group) of each queue.
    fn subscription(&self, queue: usize) -> (&str, String) {
        if self.fanout {
            (&self.streams[0], format!("{GROUP}-{queue}"))
        } else {
            (&self.streams[queue], GROUP.to_string())
        }
    }
}

impl Transport for Redis {
    type P = RedisProducer;
    type C = RedisConsumer;

    fn protocol(&self) -> &'static str {
        "redis"
    }

    fn config(&self) -> Value {
        json!({ "url": format!("redis://{}", self.addr) })
    }

    async fn prepare(&self, keep: bool) -> Result<u64> {
        let mut c = Wire::connect(&self.addr).await?;
        let streams = if self.fanout {
            &self.streams[..1]
        } else {
            &self.streams
        };
        let mut backlog = 0;
        for s in streams {
            if !keep {
                call(&mut c, &[b"DEL", s.as_bytes()]).await?;
            }
            if let Reply::Int(n) = call(&mut c, &[b"XLEN", s.as_bytes()]).await? {
                backlog += n.max(0) as u64;
            }
        }
        for q in 0..self.streams.len() {
            let (s, group) = self.subscription(q);
            match call(
                &mut c,
                &[
                    b"XGROUP",
                    b"CREATE",
                    s.as_bytes(),
                    group.as_bytes(),
                    b"0",
                    b"MKSTREAM",
                ],
            )
            .await?
            {
                // The group is there already (--no-purge).
                Reply::Error(e) if e.starts_with("BUSYGROUP") => {}
                Reply::Error(e) => bail!("XGROUP CREATE {s} {group}: {e}"),
                _ => {}
            }
        }
        Ok(backlog)
    }

    async fn producer(&self, _id: usize) -> Result<RedisProducer> {
        Ok(RedisProducer {
            wire: Wire::connect(&self.addr).await?,
            streams: self.streams.clone(),
        })
    }

    async fn consumer(&self, queue: usize, id: u32) -> Result<RedisConsumer> {
        let (stream, group) = self.subscription(queue);
        let stream = stream.to_string();
        let name = format!("c{id}");
        let count = self.prefetch.to_string();
        let mut read = Vec::new();
        command(
            &mut read,
            &[
                b"XREADGROUP",
                b"GROUP",
                group.as_bytes(),
                name.as_bytes(),
                b"COUNT",
                count.as_bytes(),
                b"BLOCK",
                b"1000",
                b"STREAMS",
                stream.as_bytes(),
                b">",
            ],
        );
        Ok(RedisConsumer {
            wire: Wire::connect(&self.addr).await?,
            stream,
            group,
            delete: !self.fanout,
            read,
            to_ack: Vec::new(),
        })
    }
}

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
enum Reply {
    Status,
    Error(String),
    Int(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Reply>>),
}

/// Appends a command (an array of bulk strings) to `out`.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One command and its reply (setup only).
async fn call(w: &mut Wire, args: &[&[u8]]) -> Result<Reply> {
    command(&mut w.out, args);
    w.flush().await?;
    next_reply(w).await
}

async fn next_reply(w: &mut Wire) -> Result<Reply> {
    loop {
        if let Some(r) = parse(&mut w.input)? {
            return Ok(r);
        }
        w.fill().await?;
    }
}

/// Takes one reply off the front of `buf`, if a whole one is there.
fn parse(buf: &mut BytesMut) -> Result<Option<Reply>> {
    match scan(buf, 0)? {
        Some((reply, end)) => {
            buf.advance(end);
            Ok(Some(reply))
        }
        None => Ok(None),
    }
}

/// The reply starting at `at` and where it ends, or None if incomplete.
fn scan(buf: &BytesMut, at: usize) -> Result<Option<(Reply, usize)>> {
    let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[at + 1..at + eol];
    let next = at + eol + 2;
    let int = || -> Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad RESP number {:?}", String::from_utf8_lossy(line)))
    };
    Ok(match buf.get(at) {
        Some(b'+') => Some((Reply::Status, next)),
        Some(b'-') => Some((
            Reply::Error(String::from_utf8_lossy(line).into_owned()),
            next,
        )),
        Some(b':') => Some((Reply::Int(int()?), next)),
        Some(b'$') => match int()? {
            n if n < 0 => Some((Reply::Bulk(None), next)),
            n => {
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    None
                } else {
                    let b = Bytes::copy_from_slice(&buf[next..end]);
                    Some((Reply::Bulk(Some(b)), end + 2))
                }
            }
        },
        Some(b'*') => match int()? {
            n if n < 0 => Some((Reply::Array(None), next)),
            n => {
                let mut items = Vec::with_capacity(n.min(1024) as usize);
                let mut pos = next;
                for _ in 0..n {
                    match scan(buf, pos)? {
                        Some((r, p)) => {
                            items.push(r);
                            pos = p;
                        }
                        None => return Ok(None),
                    }
                }
                Some((Reply::Array(Some(items)), pos))
            }
        },
        other => bail!("unexpected RESP type byte {other:?}"),
    })
}

struct RedisProducer {
    wire: Wire,
    streams: Vec<String>,
}

impl Producer for RedisProducer {
    fn send(&mut self, queue: usize, body: &[u8]) {
        command(
            &mut self.wire.out,
            &[b"XADD", self.streams[queue].as_bytes(), b"*", b"d", body],
        );
    }

    async fn flush(&mut self) -> Result<()> {
        self.wire.flush().await
    }

    async fn acks(&mut self) -> Result<u64> {
        loop {
            let mut acks = 0;
            while let Some(r) = parse(&mut self.wire.input)? {
                match r {
                    Reply::Bulk(Some(_)) => acks += 1,
                    Reply::Error(e) => bail!("XADD: {e}"),
                    other => bail!("XADD answered {other:?}"),
                }
            }
            if acks > 0 {
                return Ok(acks);
            }
            self.wire.fill().await?;
        }
    }
}

struct RedisConsumer {
    wire: Wire,
    stream: String,
    group: String,
    /// XDEL what was acknowledged (not with fan-out: the other groups still
    /// need it).
    delete: bool,
    /// The XREADGROUP command, ready to write.
    read: Vec<u8>,
    /// Entry ids handed out by the last `next`.
    to_ack: Vec<Bytes>,
}

impl RedisConsumer {
    /// Queues XACK (and XDEL) of the entries handed out; returns how many
    /// replies they will bring.
    fn queue_acks(&mut self) -> usize {
        if self.to_ack.is_empty() {
            return 0;
        }
        let ids = self.to_ack.iter().map(|id| &id[..]);
        let mut ack: Vec<&[u8]> = vec![b"XACK", self.stream.as_bytes(), self.group.as_bytes()];
        ack.extend(ids.clone());
        command(&mut self.wire.out, &ack);
        let mut replies = 1;
        if self.delete {
            let mut del: Vec<&[u8]> = vec![b"XDEL", self.stream.as_bytes()];
            del.extend(ids);
            command(&mut self.wire.out, &del);
            replies += 1;
        }
        self.to_ack.clear();
        replies
    }

    async fn ack_replies(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            if let Reply::Error(e) = next_reply(&mut self.wire).await? {
                bail!("XACK/XDEL: {e}");
            }
        }
        Ok(())
    }
}

impl Consumer for RedisConsumer {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<()> {
        let acks = self.queue_acks();
        self.wire.out.extend_from_slice(&self.read);
        self.wire.flush().await?;
        self.ack_replies(acks).await?;
        // *1 [ [stream, [ [id, [field, value]], ... ] ] ], or nil after BLOCK.
        let reply = next_reply(&mut self.wire).await?;
        let streams = match reply {
            Reply::Array(Some(s)) => s,
            Reply::Array(None) | Reply::Bulk(None) => return Ok(()),
            Reply::Error(e) => bail!("XREADGROUP: {e}"),
            other => bail!("XREADGROUP answered {other:?}"),
        };
        for s in streams {
            let Reply::Array(Some(mut parts)) = s else {
                continue;
            };
            let Some(Reply::Array(Some(entries))) = parts.pop() else {
                continue;
            };
            for e in entries {
                let Reply::Array(Some(mut e)) = e else {
                    continue;
                };
                let fields = e.pop();
                let id = e.pop();
                if let (Some(Reply::Bulk(Some(id))), Some(Reply::Array(Some(mut f)))) = (id, fields)
                {
                    if let Some(Reply::Bulk(Some(body))) = f.pop() {
                        out.push(body);
                    }
                    self.to_ack.push(id);
                }
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        let acks = self.queue_acks();
        self.wire.flush().await?;
        self.ack_replies(acks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        command(&mut out, &[b"XLEN", b"s"]);
        assert_eq!(out, b"*2\r\n$4\r\nXLEN\r\n$1\r\ns\r\n");
    }

    #[test]
    fn parses_nested_replies_and_waits_for_whole_ones() {
        let full =
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nd\r\n$2\r\nhi\r\n:7\r\n";
        let mut partial = BytesMut::from(&full[..20]);
        assert_eq!(parse(&mut partial).unwrap(), None);
        let mut b = BytesMut::from(&full[..]);
        let Some(Reply::Array(Some(streams))) = parse(&mut b).unwrap() else {
            panic!("expected an array");
        };
        assert_eq!(streams.len(), 1);
        assert_eq!(parse(&mut b).unwrap(), Some(Reply::Int(7)));
        assert!(b.is_empty());
        let mut e = BytesMut::from(&b"-BUSYGROUP exists\r\n$-1\r\n*-1\r\n"[..]);
        assert_eq!(
            parse(&mut e).unwrap(),
            Some(Reply::Error("BUSYGROUP exists".into()))
        );
        assert_eq!(parse(&mut e).unwrap(), Some(Reply::Bulk(None)));
        assert_eq!(parse(&mut e).unwrap(), Some(Reply::Array(None)));
        assert!(parse(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
    }
}
