//! A minimal blocking AMQP 0-9-1 client on amq-protocol's codecs, for tests
//! that need to send exactly the bytes they mean (bad input) or check exact
//! replies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};

pub const HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

pub struct Amqp {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Between `cork` and `uncork`: what is sent, to go out in one write.
    corked: Option<Vec<u8>>,
}

/// How a handshake should go.
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub vhost: &'a str,
    /// Announce the authentication_failure_close capability.
    pub auth_failure_close: bool,
    pub frame_max: u32,
    pub heartbeat: u16,
    /// Announce the connection.blocked capability.
    pub blocked_capability: bool,
}

impl Default for Login<'_> {
    fn default() -> Self {
        Login {
            user: "guest",
            password: "guest",
            vhost: "/",
            auth_failure_close: true,
            frame_max: 131072,
            heartbeat: 0,
            blocked_capability: false,
        }
    }
}

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("encode frame");
    ctx.into_inner().0
}

impl Amqp {
    pub fn connect(addr: SocketAddr) -> Amqp {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Amqp {
            stream,
            buf: Vec::new(),
            corked: None,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.corked {
            Some(held) => held.extend_from_slice(bytes),
            None => self.stream.write_all(bytes).expect("send"),
        }
    }

    /// Holds what is sent from now on until `uncork`, which sends it all in
    /// one write, so that the server reads it together.
    pub fn cork(&mut self) {
        self.corked = Some(Vec::new());
    }

    pub fn uncork(&mut self) {
        if let Some(held) = self.corked.take() {
            self.stream.write_all(&held).expect("send");
        }
    }

    pub fn send(&mut self, channel: u16, class: AMQPClass) {
        let bytes = encode(&AMQPFrame::Method(channel, class));
        self.send_raw(&bytes);
    }

    /// A method frame from its raw payload (class id, method id, arguments).
    pub fn send_method_payload(&mut self, channel: u16, payload: &[u8]) {
        let mut f = vec![1];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        self.send_raw(&f);
    }

    /// Reads raw bytes until EOF or timeout (for the protocol-header reply).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame; Err when the server closed the connection.
    pub fn recv(&mut self) -> std::io::Result<AMQPFrame> {
        loop {
            if !self.buf.is_empty() {
                match parse_frame(&self.buf[..]) {
                    Ok((rest, frame)) => {
                        let used = self.buf.len() - rest.len();
                        self.buf.drain(..used);
                        return Ok(frame);
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => panic!("server sent a frame that does not parse: {e}"),
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next method (heartbeats skipped).
    pub fn recv_method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.recv().expect("a frame") {
                AMQPFrame::Method(ch, m) => return (ch, m),
                AMQPFrame::Heartbeat => continue,
                other => panic!("expected a method, got {other:?}"),
            }
        }
    }

    pub fn handshake(addr: SocketAddr, login: &Login<'_>) -> Amqp {
        let mut c = Amqp::connect(addr);
        c.start(login);
        match c.recv_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => c,
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Everything up to and including connection.open; the caller reads the
    /// answer to open.
    pub fn start(&mut self, login: &Login<'_>) {
        self.send_raw(HEADER);
        match self.recv_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => {}
            other => panic!("expected connection.start, got {other:?}"),
        }
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(login.auth_failure_close),
        );
        caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
        if login.blocked_capability {
            caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(
                    format!("\0{}\0{}", login.user, login.password).into_bytes(),
                ),
                locale: "en_US".into(),
            })),
        );
        let tune = match self.recv() {
            Ok(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t)))) => t,
            // A refused login: the caller looks at what follows.
            Ok(other) => {
                self.pushback(other);
                return;
            }
            Err(_) => return,
        };
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: login.frame_max,
                heartbeat: login.heartbeat,
            })),
        );
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: login.vhost.into(),
            })),
        );
    }

    fn pushback(&mut self, frame: AMQPFrame) {
        let mut bytes = encode(&frame);
        bytes.extend_from_slice(&self.buf);
        self.buf = bytes;
    }

    pub fn open_channel(&mut self, ch: u16) {
        self.send(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        match self.recv_method() {
            (c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if c == ch => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Reads until connection.close; returns (code, text, class, method)
    /// after answering close-ok.
    pub fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.recv() {
                Ok(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    self.send(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    return (
                        c.reply_code,
                        c.reply_text.as_str().to_string(),
                        c.class_id,
                        c.method_id,
                    );
                }
                Ok(_) => continue,
                Err(e) => panic!("connection ended without connection.close: {e}"),
            }
        }
    }

    /// Reads until channel.close on `ch`; answers close-ok; returns (code, text).
    pub fn expect_channel_close(&mut self, ch: u16) -> (u16, String) {
        loop {
            match self.recv() {
                Ok(AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(close))))
                    if c == ch =>
                {
                    self.send(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    return (close.reply_code, close.reply_text.as_str().to_string());
                }
                Ok(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    panic!(
                        "expected channel.close, got connection.close {} {}",
                        c.reply_code,
                        c.reply_text.as_str()
                    )
                }
                Ok(_) => continue,
                Err(e) => panic!("connection ended without channel.close: {e}"),
            }
        }
    }

    /// True if the server closes the socket (EOF or reset) within 10 s.
    pub fn is_closed_by_server(&mut self) -> bool {
        loop {
            match self.recv() {
                Ok(_) => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                    );
                }
            }
        }
    }

    pub fn declare_queue(&mut self, ch: u16, name: &str) -> String {
        self.send(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        match self.recv_method() {
            (c, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) if c == ch => {
                ok.queue.as_str().to_string()
            }
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }

    pub fn publish_header(&mut self, ch: u16, exchange: &str, routing_key: &str) {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
    }

    /// A content header frame with empty properties and `body_size`.
    pub fn content_header(&mut self, ch: u16, body_size: u64) {
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&body_size.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        let mut f = vec![2];
        f.extend_from_slice(&ch.to_be_bytes());
        f.extend_from_slice(&(p.len() as u32).to_be_bytes());
        f.extend_from_slice(&p);
        f.push(0xCE);
        self.send_raw(&f);
    }

    /// Sends a method on `ch` and returns the next method on that channel.
    /// A channel.close is answered with close-ok and returned as
    /// Err((code, text)).
    pub fn call(&mut self, ch: u16, class: AMQPClass) -> Result<AMQPClass, (u16, String)> {
        self.send(ch, class);
        self.next_on(ch)
    }

    /// The next method on `ch` (other channels' frames skipped); see `call`.
    pub fn next_on(&mut self, ch: u16) -> Result<AMQPClass, (u16, String)> {
        loop {
            match self.recv().expect("a frame") {
                AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
                    if c == ch =>
                {
                    self.send(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    return Err((close.reply_code, close.reply_text.as_str().to_string()));
                }
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    panic!(
                        "connection.close {} {} while waiting on channel {ch}",
                        c.reply_code,
                        c.reply_text.as_str()
                    )
                }
                AMQPFrame::Method(c, m) if c == ch => return Ok(m),
                _ => continue,
            }
        }
    }

    /// basic.publish with a body and, if given, a `user_id` property.
    pub fn publish(
        &mut self,
        ch: u16,
        exchange: &str,
        routing_key: &str,
        user_id: Option<&str>,
        body: &[u8],
    ) {
        self.publish_header(ch, exchange, routing_key);
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&(body.len() as u64).to_be_bytes());
        match user_id {
            Some(u) => {
                p.extend_from_slice(&0x0010u16.to_be_bytes());
                p.push(u.len() as u8);
                p.extend_from_slice(u.as_bytes());
            }
            None => p.extend_from_slice(&[0, 0]),
        }
        let mut f = vec![2];
        f.extend_from_slice(&ch.to_be_bytes());
        f.extend_from_slice(&(p.len() as u32).to_be_bytes());
        f.extend_from_slice(&p);
        f.push(0xCE);
        self.send_raw(&f);
        if !body.is_empty() {
            self.content_body(ch, body);
        }
    }

    pub fn content_body(&mut self, ch: u16, body: &[u8]) {
        let mut f = vec![3];
        f.extend_from_slice(&ch.to_be_bytes());
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
        f.push(0xCE);
        self.send_raw(&f);
    }
}
