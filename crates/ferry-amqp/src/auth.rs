//! The SASL mechanisms AMQP clients log in with (PLAIN, AMQPLAIN), and the
//! translation of `ferry_core::access` decisions into AMQP errors.
//!
//! Who may log in and what they may do is decided in one place for every
//! front end, `ferry_core::access::AccessControl`; this module only parses
//! the client's response and names the reply codes RabbitMQ uses: a refused
//! login is `403 ACCESS_REFUSED` (or a silent close), a vhost without
//! permissions `530 NOT_ALLOWED`, a refused operation `403 ACCESS_REFUSED`
//! on the channel.

use std::net::IpAddr;

use ferry_core::access::{AccessControl, AccessRefused, LoginRefused};
use ferry_core::messaging::FieldValue;

use crate::errors::{ACCESS_REFUSED, AmqpError};
use crate::table;

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// Why a login failed (logged; the client is told only that it failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown mechanism: 503 COMMAND_INVALID, as RabbitMQ answers.
    UnknownMechanism(String),
    /// The response did not parse: also a refused login.
    BadResponse(String),
    Refused(LoginRefused),
}

/// Checks a `connection.start-ok` response; returns the user name.
pub fn authenticate(
    access: &AccessControl,
    mechanism: &str,
    response: &[u8],
    peer: IpAddr,
) -> Result<String, AuthFailure> {
    let (name, password) = match mechanism {
        "PLAIN" => parse_plain(response)?,
        "AMQPLAIN" => parse_amqplain(response)?,
        other => return Err(AuthFailure::UnknownMechanism(other.to_string())),
    };
    access
        .authenticate(&name, &password, peer)
        .map_err(AuthFailure::Refused)
}

/// A refused operation on a channel: `403 ACCESS_REFUSED - <RabbitMQ's text>`.
pub fn refused(e: AccessRefused) -> AmqpError {
    AmqpError::channel(ACCESS_REFUSED, e.message)
}

/// PLAIN: `[authzid] NUL authcid NUL passwd`.
fn parse_plain(response: &[u8]) -> Result<(String, String), AuthFailure> {
    let parts: Vec<&[u8]> = response.split(|&b| b == 0).collect();
    if parts.len() != 3 {
        return Err(AuthFailure::BadResponse(
            "PLAIN response is not authzid NUL user NUL password".into(),
        ));
    }
    Ok((
        String::from_utf8_lossy(parts[1]).into_owned(),
        String::from_utf8_lossy(parts[2]).into_owned(),
    ))
}

/// AMQPLAIN: a field table without its length prefix, LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Result<(String, String), AuthFailure> {
    let entries = table::parse_entries(response, 0)
        .map_err(|e| AuthFailure::BadResponse(format!("AMQPLAIN response: {e}")))?;
    let get = |k: &str| match table::lookup(&entries, k) {
        Some(FieldValue::Str(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    };
    match (get("LOGIN"), get("PASSWORD")) {
        (Some(l), Some(p)) => Ok((l, p)),
        _ => Err(AuthFailure::BadResponse(
            "AMQPLAIN response lacks LOGIN or PASSWORD".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferry_core::messaging::field_table;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn guest_from_loopback_only() {
        let a = AccessControl::default();
        assert_eq!(
            authenticate(&a, "PLAIN", b"\0guest\0guest", LOCAL).unwrap(),
            "guest"
        );
        assert!(matches!(
            authenticate(&a, "PLAIN", b"\0guest\0guest", REMOTE),
            Err(AuthFailure::Refused(LoginRefused::LoopbackOnly(_)))
        ));
        assert!(matches!(
            authenticate(&a, "PLAIN", b"\0guest\0nope", LOCAL),
            Err(AuthFailure::Refused(_))
        ));
        assert!(matches!(
            authenticate(&a, "PLAIN", b"garbage", LOCAL),
            Err(AuthFailure::BadResponse(_))
        ));
        assert!(matches!(
            authenticate(&a, "EXTERNAL", b"", LOCAL),
            Err(AuthFailure::UnknownMechanism(_))
        ));
    }

    #[test]
    fn amqplain() {
        let mut t = bytes::BytesMut::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
            field_table::write_short_str(&mut t, k.as_bytes());
            field_table::write_value(&mut t, &table::str_value(v));
        }
        let a = AccessControl::default();
        assert_eq!(authenticate(&a, "AMQPLAIN", &t, LOCAL).unwrap(), "guest");
        assert!(authenticate(&a, "AMQPLAIN", &t[..5], LOCAL).is_err());
    }
}
