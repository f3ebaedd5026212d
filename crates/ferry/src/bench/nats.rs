//! `ferry bench nats`: NATS JetStream as a durable queue, for the side by
//! side comparison (`scripts/bench-compare`). A small client of the NATS
//! text protocol: each queue is a file-stored stream with work-queue
//! retention (a message is removed once acknowledged, as in a queue),
//! published to with a reply subject so that JetStream acknowledges each
//! message once stored; consumers share one durable pull consumer per
//! stream, fetch `--prefetch` messages per pull and acknowledge each one
//! (`+ACK` to its reply subject) with the next pull.

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use clap::Args;
use serde_json::{Value, json};

use super::driver::{self, Consumer, Plan, Producer, Transport};
use super::wire::{Wire, host_port};

#[derive(Debug, Args)]
pub struct NatsArgs {
    /// Server to connect to.
    #[arg(
        long,
        env = "FERRY_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    url: String,
    #[command(flatten)]
    plan: Plan,
}

pub async fn run(args: NatsArgs) -> Result<bool> {
    let transport = Nats {
        addr: host_port(&args.url, 4222),
        streams: args.plan.names(),
        prefetch: args.plan.prefetch,
        fanout: args.plan.fanout,
    };
    driver::run(transport, &args.plan).await
}

const DURABLE: &str = "ferry-bench";

struct Nats {
    addr: String,
    streams: Vec<String>,
    prefetch: u32,
    /// One stream (the first name) with a durable consumer per queue.
    fanout: bool,
}

impl Nats {
    /// Work-queue retention removes a message once acknowledged, as a queue
    /// does, but allows one consumer per stream; fan-out keeps messages
    /// (limits retention) for its consumers.
    fn retention(&self) -> &'static str {
        if self.fanout { "limits" } else { "workqueue" }
    }

    /// The streams the run uses.
    fn used_streams(&self) -> &[String] {
        if self.fanout {
            &self.streams[..1]
        } else {
            &self.streams
        }
    }

    /// (stream, durable consumer) of each queue.
    fn subscription(&self, queue: usize) -> (&str, String) {
        if self.fanout {
            (&self.streams[0], format!("{DURABLE}-{queue}"))
        } else {
            (&self.streams[queue], DURABLE.to_string())
        }
    }
}

impl Transport for Nats {
    type P = NatsProducer;
    type C = NatsConsumer;

    fn protocol(&self) -> &'static str {
        "nats"
    }

    fn config(&self) -> Value {
        json!({ "url": format!("nats://{}", self.addr), "storage": "file", "retention": self.retention() })
    }

    async fn prepare(&self, keep: bool) -> Result<u64> {
        let mut c = Connection::open(&self.addr, "_INBOX.ferry-bench-setup").await?;
        let mut backlog = 0;
        for s in self.used_streams() {
            if !keep {
                // A stream that is not there is fine.
                let _ = c
                    .request(&format!("$JS.API.STREAM.DELETE.{s}"), b"")
                    .await?;
            }
            let config = json!({
                "name": s, "subjects": [s], "storage": "file", "retention": self.retention(),
                "num_replicas": 1, "discard": "old",
            });
            let created = c
                .request(
                    &format!("$JS.API.STREAM.CREATE.{s}"),
                    config.to_string().as_bytes(),
                )
                .await?;
            // JetStream's "stream name already in use" (10058) with --no-purge.
            if let Some(e) = created.get("error")
                && !(keep && e["err_code"] == 10058)
            {
                bail!("creating stream {s}: {e}");
            }
            let info = c.request(&format!("$JS.API.STREAM.INFO.{s}"), b"").await?;
            backlog += info["state"]["messages"].as_u64().unwrap_or(0);
        }
        for q in 0..self.streams.len() {
            let (s, durable) = self.subscription(q);
            let consumer = json!({
                "stream_name": s,
                "config": {
                    "durable_name": durable, "ack_policy": "explicit", "deliver_policy": "all",
                    "max_ack_pending": 1_000_000, "ack_wait": 30_000_000_000u64,
                },
            });
            let made = c
                .request(
                    &format!("$JS.API.CONSUMER.DURABLE.CREATE.{s}.{durable}"),
                    consumer.to_string().as_bytes(),
                )
                .await?;
            if let Some(e) = made.get("error") {
                bail!("creating the pull consumer {durable} of {s}: {e}");
            }
        }
        Ok(backlog)
    }

    async fn producer(&self, id: usize) -> Result<NatsProducer> {
        let inbox = format!("_INBOX.ferry-bench-p{id}");
        let conn = Connection::open(&self.addr, &inbox).await?;
        Ok(NatsProducer {
            conn,
            subjects: self.streams.clone(),
            inbox,
        })
    }

    async fn consumer(&self, queue: usize, id: u32) -> Result<NatsConsumer> {
        let inbox = format!("_INBOX.ferry-bench-c{queue}-{id}");
        let conn = Connection::open(&self.addr, &inbox).await?;
        let (stream, durable) = self.subscription(queue);
        Ok(NatsConsumer {
            conn,
            pull: format!(
                "PUB $JS.API.CONSUMER.MSG.NEXT.{stream}.{durable} {inbox} {}\r\n{}\r\n",
                pull_body(self.prefetch).len(),
                pull_body(self.prefetch)
            )
            .into_bytes(),
            batch: self.prefetch,
            pending: 0,
            to_ack: Vec::new(),
        })
    }
}

/// A pull of up to `batch` messages that the server ends after a second.
fn pull_body(batch: u32) -> String {
    format!(r#"{{"batch":{batch},"expires":1000000000}}"#)
}

/// One connection, subscribed to its inbox (subscription id 1).
struct Connection {
    wire: Wire,
    inbox: String,
}

/// What the server sends that a client here acts on.
enum Frame {
    /// A message (MSG or HMSG): its reply subject, its headers (HMSG) and
    /// its payload.
    Msg {
        reply: Option<Bytes>,
        headers: Option<Bytes>,
        payload: Bytes,
    },
    Ping,
    Other,
}

impl Connection {
    async fn open(addr: &str, inbox: &str) -> Result<Connection> {
        let mut wire = Wire::connect(addr).await?;
        let connect = json!({
            "verbose": false, "pedantic": false, "headers": true, "no_responders": true,
            "protocol": 1, "name": "ferry-bench", "lang": "rust", "version": env!("CARGO_PKG_VERSION"),
        });
        wire.out.extend_from_slice(
            format!("CONNECT {connect}\r\nSUB {inbox} 1\r\nPING\r\n").as_bytes(),
        );
        wire.flush().await?;
        let mut c = Connection {
            wire,
            inbox: inbox.to_string(),
        };
        // The server's INFO, then our PING's PONG (or an -ERR).
        loop {
            let line = c.line().await?;
            if line.starts_with(b"PONG") {
                return Ok(c);
            }
            if line.starts_with(b"-ERR") {
                bail!("{}", String::from_utf8_lossy(&line));
            }
        }
    }

    /// The next control line during the handshake.
    async fn line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(i) = find_crlf(&self.wire.input) {
                let line = self.wire.input.split_to(i + 2);
                return Ok(line[..i].to_vec());
            }
            self.wire.fill().await?;
        }
    }

    /// A JetStream API request: the reply's JSON.
    async fn request(&mut self, subject: &str, body: &[u8]) -> Result<Value> {
        let head = format!("PUB {subject} {} {}\r\n", self.inbox, body.len());
        self.wire.out.extend_from_slice(head.as_bytes());
        self.wire.out.extend_from_slice(body);
        self.wire.out.extend_from_slice(b"\r\n");
        self.wire.flush().await?;
        loop {
            match self.frame().await? {
                Frame::Msg {
                    headers: Some(h), ..
                } if is_no_responders(&h) => {
                    bail!("no JetStream answers {subject}: is JetStream enabled (nats-server -js)?")
                }
                Frame::Msg { payload, .. } => {
                    return serde_json::from_slice(&payload)
                        .with_context(|| format!("the answer to {subject}"));
                }
                Frame::Ping => self.pong().await?,
                Frame::Other => {}
            }
        }
    }

    async fn pong(&mut self) -> Result<()> {
        self.wire.out.extend_from_slice(b"PONG\r\n");
        self.wire.flush().await
    }

    /// The next frame, reading as needed.
    async fn frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = parse(&mut self.wire.input)? {
                return Ok(f);
            }
            self.wire.fill().await?;
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Takes one frame off the front of `buf`, if a whole one is there.
fn parse(buf: &mut BytesMut) -> Result<Option<Frame>> {
    let Some(eol) = find_crlf(buf) else {
        return Ok(None);
    };
    let line = &buf[..eol];
    let fields: Vec<&[u8]> = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|f| !f.is_empty())
        .collect();
    let op = fields
        .first()
        .map(|f| f.to_ascii_uppercase())
        .unwrap_or_default();
    let num = |f: &[u8]| -> Result<usize> {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad length in {}", String::from_utf8_lossy(line)))
    };
    match op.as_slice() {
        b"MSG" | b"HMSG" => {
            let hmsg = op == b"HMSG";
            // MSG subject sid [reply] size; HMSG subject sid [reply] hdr total.
            let sizes = if hmsg { 2 } else { 1 };
            if fields.len() < 3 + sizes {
                bail!("malformed {}", String::from_utf8_lossy(line));
            }
            let total = num(fields[fields.len() - 1])?;
            let hdr = if hmsg {
                num(fields[fields.len() - 2])?
            } else {
                0
            };
            let reply = (fields.len() == 4 + sizes).then(|| Bytes::copy_from_slice(fields[3]));
            if buf.len() < eol + 2 + total + 2 {
                return Ok(None);
            }
            buf.advance(eol + 2);
            let mut body = buf.split_to(total).freeze();
            buf.advance(2);
            let headers = hmsg.then(|| body.split_to(hdr));
            Ok(Some(Frame::Msg {
                reply,
                headers,
                payload: body,
            }))
        }
        b"PING" => {
            buf.advance(eol + 2);
            Ok(Some(Frame::Ping))
        }
        b"-ERR" => bail!("server error: {}", String::from_utf8_lossy(line)),
        _ => {
            buf.advance(eol + 2);
            Ok(Some(Frame::Other))
        }
    }
}

/// A status header: "NATS/1.0 503" is "no responders" (no JetStream).
fn is_no_responders(headers: &[u8]) -> bool {
    headers.starts_with(b"NATS/1.0 503")
}

struct NatsProducer {
    conn: Connection,
    subjects: Vec<String>,
    inbox: String,
}

impl Producer for NatsProducer {
    fn send(&mut self, queue: usize, body: &[u8]) {
        let out = &mut self.conn.wire.out;
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(self.subjects[queue].as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.inbox.as_bytes());
        out.extend_from_slice(format!(" {}\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> Result<()> {
        self.conn.wire.flush().await
    }

    async fn acks(&mut self) -> Result<u64> {
        loop {
            let mut acks = 0;
            while let Some(f) = parse(&mut self.conn.wire.input)? {
                match f {
                    Frame::Msg { payload, .. } => {
                        // {"stream":"s","seq":N} or {"error":{...}}.
                        if payload.windows(8).any(|w| w == b"\"error\":") {
                            bail!("publish refused: {}", String::from_utf8_lossy(&payload));
                        }
                        acks += 1;
                    }
                    // Answered with the next flush.
                    Frame::Ping => self.conn.wire.out.extend_from_slice(b"PONG\r\n"),
                    Frame::Other => {}
                }
            }
            if acks > 0 {
                return Ok(acks);
            }
            self.conn.wire.fill().await?;
        }
    }
}

struct NatsConsumer {
    conn: Connection,
    /// The pull request, ready to write.
    pull: Vec<u8>,
    batch: u32,
    /// Messages the open pull may still bring; 0: no pull open.
    pending: u32,
    /// Reply subjects of the messages handed out by the last `next`.
    to_ack: Vec<Bytes>,
}

impl NatsConsumer {
    fn queue_acks(&mut self) {
        let out = &mut self.conn.wire.out;
        for reply in self.to_ack.drain(..) {
            out.extend_from_slice(b"PUB ");
            out.extend_from_slice(&reply);
            out.extend_from_slice(b" 0\r\n\r\n");
        }
    }
}

impl Consumer for NatsConsumer {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<()> {
        self.queue_acks();
        if self.pending == 0 {
            self.conn.wire.out.extend_from_slice(&self.pull);
            self.pending = self.batch;
        }
        self.conn.wire.flush().await?;
        loop {
            while let Some(f) = parse(&mut self.conn.wire.input)? {
                match f {
                    // A status (404 no messages, 408 pull expired, 409 ...)
                    // ends the pull.
                    Frame::Msg {
                        headers: Some(h), ..
                    } if h.starts_with(b"NATS/1.0 4") => self.pending = 0,
                    Frame::Msg {
                        reply: Some(reply),
                        payload,
                        ..
                    } => {
                        out.push(payload);
                        self.to_ack.push(reply);
                        self.pending = self.pending.saturating_sub(1);
                    }
                    Frame::Ping => self.conn.wire.out.extend_from_slice(b"PONG\r\n"),
                    Frame::Msg { .. } | Frame::Other => {}
                }
            }
            if !out.is_empty() || self.pending == 0 {
                return Ok(());
            }
            self.conn.wire.fill().await?;
        }
    }

    async fn finish(&mut self) -> Result<()> {
        self.queue_acks();
        self.conn.wire.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_and_waits_for_whole_ones() {
        let mut b = BytesMut::from(&b"MSG s 1 _INBOX.r 5\r\nhel"[..]);
        assert!(parse(&mut b).unwrap().is_none());
        b.extend_from_slice(b"lo\r\nHMSG i 1 12 12\r\nNATS/1.0 408\r\nPING\r\n");
        match parse(&mut b).unwrap() {
            Some(Frame::Msg {
                reply: Some(r),
                headers: None,
                payload,
            }) => {
                assert_eq!(&r[..], b"_INBOX.r");
                assert_eq!(&payload[..], b"hello");
            }
            _ => panic!("expected MSG"),
        }
        match parse(&mut b).unwrap() {
            Some(Frame::Msg {
                reply: None,
                headers: Some(h),
                payload,
            }) => {
                assert!(h.starts_with(b"NATS/1.0 408"));
                assert!(payload.is_empty());
            }
            _ => panic!("expected HMSG"),
        }
        assert!(matches!(parse(&mut b).unwrap(), Some(Frame::Ping)));
        assert!(b.is_empty());
        let mut e = BytesMut::from(&b"-ERR 'Authorization Violation'\r\n"[..]);
        assert!(parse(&mut e).is_err());
    }
}
