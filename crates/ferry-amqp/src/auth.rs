//! Users and the SASL mechanisms AMQP clients use (PLAIN, AMQPLAIN).
//!
//! Today the only user is RabbitMQ's default, `guest`/`guest`, allowed from
//! loopback addresses only (RabbitMQ's `loopback_users`). `Users` is where
//! configured users and their vhost permissions go: `authenticate` and
//! `may_open` are the two questions the connection asks.

use std::net::IpAddr;

use ferry_core::messaging::FieldValue;

use crate::table;

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
    /// Vhosts this user may open; `None` means all.
    pub vhosts: Option<Vec<String>>,
    /// Refused unless the client connects from a loopback address.
    pub loopback_only: bool,
}

#[derive(Debug, Clone)]
pub struct Users {
    users: Vec<User>,
}

impl Default for Users {
    /// RabbitMQ's default: guest/guest, from loopback only, every vhost.
    fn default() -> Self {
        Users {
            users: vec![User {
                name: "guest".into(),
                password: "guest".into(),
                vhosts: None,
                loopback_only: true,
            }],
        }
    }
}

/// Why a login failed (logged; the client is told only that it failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown mechanism: 503 COMMAND_INVALID, as RabbitMQ answers.
    UnknownMechanism(String),
    /// The response did not parse: also a refused login.
    BadResponse(String),
    Refused(String),
}

impl Users {
    pub fn new(users: Vec<User>) -> Self {
        Users { users }
    }

    /// Checks a `connection.start-ok` response; returns the user name.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        peer: IpAddr,
    ) -> Result<String, AuthFailure> {
        let (name, password) = match mechanism {
            "PLAIN" => parse_plain(response)?,
            "AMQPLAIN" => parse_amqplain(response)?,
            other => return Err(AuthFailure::UnknownMechanism(other.to_string())),
        };
        let Some(user) = self.users.iter().find(|u| u.name == name) else {
            return Err(AuthFailure::Refused(format!(
                "user '{name}' - invalid credentials"
            )));
        };
        if user.password != password {
            return Err(AuthFailure::Refused(format!(
                "user '{name}' - invalid credentials"
            )));
        }
        if user.loopback_only && !is_loopback(peer) {
            return Err(AuthFailure::Refused(format!(
                "user '{name}' can only connect via localhost"
            )));
        }
        Ok(name)
    }

    pub fn may_open(&self, user: &str, vhost: &str) -> bool {
        self.users.iter().any(|u| {
            u.name == user
                && u.vhosts
                    .as_ref()
                    .is_none_or(|v| v.iter().any(|h| h == vhost))
        })
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
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

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn guest_from_loopback_only() {
        let u = Users::default();
        assert_eq!(
            u.authenticate("PLAIN", b"\0guest\0guest", LOCAL).unwrap(),
            "guest"
        );
        assert!(matches!(
            u.authenticate("PLAIN", b"\0guest\0guest", REMOTE),
            Err(AuthFailure::Refused(_))
        ));
        assert!(matches!(
            u.authenticate("PLAIN", b"\0guest\0nope", LOCAL),
            Err(AuthFailure::Refused(_))
        ));
        assert!(matches!(
            u.authenticate("PLAIN", b"garbage", LOCAL),
            Err(AuthFailure::BadResponse(_))
        ));
        assert!(matches!(
            u.authenticate("EXTERNAL", b"", LOCAL),
            Err(AuthFailure::UnknownMechanism(_))
        ));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn amqplain() {
        let mut t = bytes::BytesMut::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
            table::write_short_str(&mut t, k.as_bytes());
            table::write_value(&mut t, &table::str_value(v));
        }
        let u = Users::default();
        assert_eq!(u.authenticate("AMQPLAIN", &t, LOCAL).unwrap(), "guest");
        assert!(u.authenticate("AMQPLAIN", &t[..5], LOCAL).is_err());
        assert!(u.may_open("guest", "/"));
        assert!(!u.may_open("nobody", "/"));
    }
}
