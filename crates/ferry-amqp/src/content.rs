//! Content assembly: a basic.publish is followed by one content header and
//! as many body frames as the header's size takes. The connection keeps one
//! `Assembly` per channel and hands it the header and body frames; this is
//! also what the `amqp_content` fuzz target drives, with no broker behind it.

use bytes::{Buf, Bytes, BytesMut};

use crate::errors::{AmqpError, FRAME_ERROR, SYNTAX_ERROR, UNEXPECTED_FRAME};
use crate::props::Props;

/// Content header bytes before the properties: class, weight, body size, flags.
const HEADER_BYTES_MIN: usize = 14;
/// The body buffer grows with the frames beyond this, rather than trusting
/// the size a header announces.
const BODY_PREALLOCATE_MAX: usize = 1 << 20;

/// A message being received on a channel: the publish, then its properties
/// once the content header came, then its body.
#[derive(Debug)]
pub struct Assembly {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub props: Option<Props>,
    pub body_size: u64,
    pub body: BytesMut,
}

impl Assembly {
    pub fn new(exchange: String, routing_key: String, mandatory: bool) -> Self {
        Assembly {
            exchange,
            routing_key,
            mandatory,
            props: None,
            body_size: 0,
            body: BytesMut::new(),
        }
    }

    /// The content header. Returns whether the message is complete (an
    /// empty body). A body larger than `message_bytes_max` is refused here,
    /// before any of it is read.
    pub fn on_header(
        &mut self,
        payload: &Bytes,
        message_bytes_max: u64,
    ) -> Result<bool, AmqpError> {
        if self.props.is_some() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected content body, got non content body frame instead",
            )
            .at(60, 40));
        }
        let mut p = payload.clone();
        if p.len() < HEADER_BYTES_MIN {
            return Err(AmqpError::connection(SYNTAX_ERROR, "content header too short").at(60, 40));
        }
        let class_id = p.get_u16();
        let _weight = p.get_u16();
        let body_size = p.get_u64();
        if class_id != 60 {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                format!(
                    "expected content header for class 60, got one for class {class_id} instead"
                ),
            )
            .at(60, 40));
        }
        let props = Props::parse(p).map_err(|e| {
            AmqpError::connection(SYNTAX_ERROR, format!("content properties: {e}")).at(60, 40)
        })?;
        if body_size > message_bytes_max {
            return Err(AmqpError::precondition(format!(
                "message size {body_size} is larger than configured max size {message_bytes_max}"
            ))
            .at(60, 40));
        }
        self.body_size = body_size;
        self.props = Some(props);
        self.body = BytesMut::with_capacity((body_size as usize).min(BODY_PREALLOCATE_MAX));
        Ok(body_size == 0)
    }

    /// A content body frame. Returns whether the message is complete.
    pub fn on_body(&mut self, payload: &[u8]) -> Result<bool, AmqpError> {
        if self.props.is_none() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
            ));
        }
        if self.body.len() as u64 + payload.len() as u64 > self.body_size {
            return Err(AmqpError::connection(
                FRAME_ERROR,
                format!(
                    "content body is longer than the {} bytes its header announced",
                    self.body_size
                ),
            )
            .at(60, 40));
        }
        self.body.extend_from_slice(payload);
        Ok(self.body.len() as u64 == self.body_size)
    }
}
