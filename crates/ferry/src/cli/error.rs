//! The CLI's one error type, its exit codes, and the hints that say what to
//! do about a Kafka error code.

use std::fmt;

use kafka_protocol::ResponseError;

/// Exit codes scripts can rely on (docs/cli.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Bad usage or a local problem (unreadable input, bad flag value).
    Local = 1,
    /// No broker could be reached, or the connection broke.
    Unreachable = 2,
    /// The broker answered with a Kafka error code.
    Refused = 3,
}

#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    pub fn local(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Local,
            message: message.into(),
            hint: None,
        }
    }

    pub fn unreachable(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Unreachable,
            message: message.into(),
            hint: Some(
                "is `ferry serve` running there? Point the CLI at a broker with \
                 --brokers HOST:PORT or FERRY_BROKERS"
                    .into(),
            ),
        }
    }

    /// The broker refused `what` (e.g. `create topic "orders"`) with `code`
    /// and, perhaps, its own explanation.
    pub fn refused(what: impl fmt::Display, code: i16, broker_message: Option<&str>) -> CliError {
        let name = error_name(code);
        let message = match broker_message.filter(|m| !m.is_empty()) {
            Some(m) => format!("cannot {what}: {name}: {m}"),
            None => format!("cannot {what}: {name}"),
        };
        CliError {
            exit: Exit::Refused,
            message,
            hint: hint(code).map(str::to_string),
        }
    }

    /// A refusal that is not a Kafka error code but the broker's state (for
    /// example a group that still has members).
    pub fn refused_state(message: impl Into<String>, hint: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Refused,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ferry: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

/// Kafka's name for an error code, e.g. 36 → TOPIC_ALREADY_EXISTS.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".into(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => {
            let camel = e.to_string();
            let mut out = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// Whether retrying the same request later may succeed.
pub fn is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable())
}

/// What a user can do about an error code.
fn hint(code: i16) -> Option<&'static str> {
    Some(match code {
        1 => "the offset is outside the partition's range; use --from beginning or --from end",
        3 => "check the name with `ferry topic list`; create it with `ferry topic create NAME`",
        5 | 6 | 13 | 16 | 41 => "leadership is moving; run the command again in a few seconds",
        7 => "the broker did not finish in time; run the command again or raise --timeout-ms",
        10 => {
            "the record is larger than the topic allows; raise it with \
             `ferry topic alter-config TOPIC --set max.message.bytes=BYTES`"
        }
        14 | 15 => "the broker is not ready to coordinate groups yet; retry in a few seconds",
        17 => {
            "topic names are 1-249 characters of letters, digits, '.', '_' and '-', \
             and not '.' or '..'"
        }
        22 | 25 | 27 => "the group rebalanced meanwhile; run the command again",
        24 => "group ids must not be empty",
        26 => "choose a session timeout within the broker's group.min/max.session.timeout.ms",
        29..=31 => "the broker denied access; check its ACLs for this principal",
        35 => "the broker does not support this request version; upgrade the broker or the CLI",
        36 => {
            "`ferry topic describe NAME` shows the existing topic; delete it first with \
             `ferry topic delete NAME` to recreate it"
        }
        37 => "give a partition count of at least 1 (-p/--partitions)",
        38 => "use a replication factor no larger than the number of brokers (-r 1 on one broker)",
        40 => {
            "check the key and value; `ferry topic describe TOPIC` lists the configs a topic \
             has and their current values"
        }
        42 => "the request was malformed or not allowed here; see the broker's log",
        56 => "the broker's disk failed; see the broker's log",
        68 => "stop the group's consumers first (`ferry group describe GROUP` lists them)",
        69 => "`ferry group list` shows the groups the broker knows",
        76 => "pick a compression codec the broker supports (--compression)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(17), "INVALID_TOPIC_EXCEPTION");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }
}
