//! AMQP reply codes and the one mapping from `MessagingError` to them.
//! Reply texts follow RabbitMQ: `<CODE_NAME> - <explanation>`.

use ferry_core::messaging::MessagingError;

pub const NO_ROUTE: u16 = 312;
pub const CONNECTION_FORCED: u16 = 320;
pub const ACCESS_REFUSED: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

pub fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        541 => "INTERNAL_ERROR",
        _ => "UNKNOWN",
    }
}

/// Whether an error closes the whole connection or only its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Connection,
    Channel,
}

/// A protocol exception, ready to become connection.close or channel.close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub scope: Scope,
    pub code: u16,
    /// The full reply text, `<CODE_NAME> - <explanation>`.
    pub text: String,
    /// The method that caused it (0, 0 when none).
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    fn new(scope: Scope, code: u16, explanation: impl std::fmt::Display) -> Self {
        let mut text = format!("{} - {}", code_name(code), explanation);
        // A short string on the wire.
        if text.len() > 255 {
            let mut cut = 255;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        AmqpError {
            scope,
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn connection(code: u16, explanation: impl std::fmt::Display) -> Self {
        Self::new(Scope::Connection, code, explanation)
    }

    pub fn channel(code: u16, explanation: impl std::fmt::Display) -> Self {
        Self::new(Scope::Channel, code, explanation)
    }

    pub fn precondition(explanation: impl std::fmt::Display) -> Self {
        Self::channel(PRECONDITION_FAILED, explanation)
    }

    pub fn not_found(explanation: impl std::fmt::Display) -> Self {
        Self::channel(NOT_FOUND, explanation)
    }

    pub fn at(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }
}

impl From<MessagingError> for AmqpError {
    fn from(e: MessagingError) -> Self {
        match &e {
            MessagingError::NotFound { .. } => AmqpError::channel(NOT_FOUND, &e),
            MessagingError::PreconditionFailed(_)
            | MessagingError::InvalidArgument { .. }
            | MessagingError::LimitReached(_) => AmqpError::channel(PRECONDITION_FAILED, &e),
            MessagingError::ResourceLocked(_) => AmqpError::channel(RESOURCE_LOCKED, &e),
            MessagingError::AccessRefused(_) => AmqpError::channel(ACCESS_REFUSED, &e),
            // Only publishes see QueueFull, and they turn it into a nack;
            // anywhere else RabbitMQ would refuse the operation.
            MessagingError::QueueFull(_) => AmqpError::channel(PRECONDITION_FAILED, &e),
            MessagingError::Storage(_) => AmqpError::connection(INTERNAL_ERROR, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_as_rabbitmq_writes_them() {
        let e: AmqpError = MessagingError::NotFound {
            kind: "queue",
            name: "x".into(),
            vhost: "/".into(),
        }
        .into();
        assert_eq!(e.code, 404);
        assert_eq!(e.scope, Scope::Channel);
        assert_eq!(e.text, "NOT_FOUND - no queue 'x' in vhost '/'");
        let long = AmqpError::channel(406, "é".repeat(300));
        assert!(long.text.len() <= 255);
    }
}
