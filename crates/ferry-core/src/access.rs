//! Users and what they may do: the one place where Ferry decides who may log
//! in and which resources a logged-in user may configure, write or read.
//!
//! The model is RabbitMQ's internal authorisation backend, so that the same
//! definitions mean the same thing here:
//!
//! - a user has a name, a password (kept plain or as RabbitMQ's salted
//!   `rabbit_password_hashing_sha256`/`sha512` hash), tags, and per vhost
//!   three regular expressions: `configure`, `write` and `read`;
//! - a user with no permissions on a vhost may not open it;
//! - a resource (queue, exchange) may be used for an operation when its name
//!   matches the user's regular expression for that permission in its vhost,
//!   anywhere in the name (RabbitMQ's `re:run`, unanchored); an empty
//!   expression matches nothing;
//! - the default exchange is `amq.default` in permission checks;
//! - users listed in `loopback_users` may only connect from loopback
//!   addresses (by default `guest`).
//!
//! Front ends parse their protocol's credentials (AMQP's PLAIN and AMQPLAIN
//! today, Kafka SASL/PLAIN and SQS later), call [`AccessControl::authenticate`]
//! once, then [`AccessControl::check_vhost_access`] and
//! [`AccessControl::check_resource_access`], and turn a refusal into their
//! protocol's error with the message given here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

/// The three permissions of RabbitMQ's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Create, delete or change a resource (declare, delete).
    Configure,
    /// Put messages into a resource (publish to an exchange, bind a
    /// destination).
    Write,
    /// Take messages out of a resource (consume, get, purge, bind a source).
    Read,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Queue,
    Exchange,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Exchange => "exchange",
        })
    }
}

/// A named resource in a vhost, as a permission check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a> {
    pub vhost: &'a str,
    pub kind: ResourceKind,
    pub name: &'a str,
}

impl<'a> Resource<'a> {
    pub fn queue(vhost: &'a str, name: &'a str) -> Self {
        Resource {
            vhost,
            kind: ResourceKind::Queue,
            name,
        }
    }

    /// An exchange; `""` (the default exchange) is checked as `amq.default`,
    /// as RabbitMQ does.
    pub fn exchange(vhost: &'a str, name: &'a str) -> Self {
        Resource {
            vhost,
            kind: ResourceKind::Exchange,
            name: if name.is_empty() { "amq.default" } else { name },
        }
    }
}

impl fmt::Display for Resource<'_> {
    /// RabbitMQ's `rabbit_misc:rs/1`: `queue 'q' in vhost '/'`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}' in vhost '{}'", self.kind, self.name, self.vhost)
    }
}

/// A refused login. The client is only told that the login failed; the
/// reason is for the broker's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    #[error("user '{0}' - invalid credentials")]
    InvalidCredentials(String),
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
}

/// An operation the user may not do. `message` is RabbitMQ's text (without
/// the reply code's name), e.g. `write access to exchange 'x' in vhost '/'
/// refused for user 'u'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AccessRefused {
    pub message: String,
}

/// One vhost's permissions of a user, as configured: three regular
/// expressions (RabbitMQ's `set_permissions -p VHOST USER CONF WRITE READ`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSpec {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl PermissionSpec {
    /// `.*` for all three.
    pub fn full() -> Self {
        PermissionSpec {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }
}

/// A user as configured (`[[amqp.users]]` in ferry.toml).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    /// The password in plain text.
    #[serde(default)]
    pub password: Option<String>,
    /// RabbitMQ's password hash: base64 of a 4-byte salt followed by
    /// `hash(salt ++ password)` (what `rabbitmqctl hash_password` prints and
    /// definitions files hold).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// `rabbit_password_hashing_sha256` (the default) or
    /// `rabbit_password_hashing_sha512`.
    #[serde(default)]
    pub hashing_algorithm: Option<String>,
    /// RabbitMQ's user tags (`administrator`, `management`, `impersonator`,
    /// ...). Only `impersonator` changes anything here: such a user may
    /// publish messages with another user's `user_id`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Per vhost: configure, write and read expressions.
    #[serde(default)]
    pub permissions: BTreeMap<String, PermissionSpec>,
}

/// Never prints the password or its hash.
impl fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSpec")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("password_hash", &self.password_hash.as_ref().map(|_| ".."))
            .field("hashing_algorithm", &self.hashing_algorithm)
            .field("tags", &self.tags)
            .field("permissions", &self.permissions)
            .finish()
    }
}

impl UserSpec {
    /// RabbitMQ's default user: guest/guest with full permissions on `/`
    /// (and, through the default `loopback_users`, from loopback only).
    pub fn guest() -> Self {
        UserSpec {
            name: "guest".into(),
            password: Some("guest".into()),
            password_hash: None,
            hashing_algorithm: None,
            tags: vec!["administrator".into()],
            permissions: BTreeMap::from([("/".to_string(), PermissionSpec::full())]),
        }
    }
}

/// A configuration that cannot be used; names the user and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccessConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashAlgorithm {
    Sha256,
    Sha512,
}

#[derive(Clone)]
enum Credential {
    Plain(String),
    Hashed {
        algorithm: HashAlgorithm,
        salt: [u8; 4],
        hash: Vec<u8>,
    },
}

/// Never prints a password or hash (settings get logged).
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Plain(_) => f.write_str("Plain(..)"),
            Credential::Hashed { algorithm, .. } => write!(f, "Hashed({algorithm:?}, ..)"),
        }
    }
}

impl Credential {
    fn verify(&self, password: &str) -> bool {
        match self {
            Credential::Plain(p) => constant_time_eq(p.as_bytes(), password.as_bytes()),
            Credential::Hashed {
                algorithm,
                salt,
                hash,
            } => constant_time_eq(&salted_hash(*algorithm, salt, password), hash),
        }
    }
}

fn salted_hash(algorithm: HashAlgorithm, salt: &[u8; 4], password: &str) -> Vec<u8> {
    match algorithm {
        HashAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(password.as_bytes());
            h.finalize().to_vec()
        }
        HashAlgorithm::Sha512 => {
            let mut h = Sha512::new();
            h.update(salt);
            h.update(password.as_bytes());
            h.finalize().to_vec()
        }
    }
}

/// RabbitMQ's password hash of `password` with `salt`, base64 as
/// definitions files hold it (`rabbit_password_hashing_sha256`).
pub fn hash_password_sha256(salt: [u8; 4], password: &str) -> String {
    let mut out = salt.to_vec();
    out.extend_from_slice(&salted_hash(HashAlgorithm::Sha256, &salt, password));
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone)]
struct VhostPermissions {
    configure: Regex,
    write: Regex,
    read: Regex,
}

impl VhostPermissions {
    fn regex(&self, p: Permission) -> &Regex {
        match p {
            Permission::Configure => &self.configure,
            Permission::Write => &self.write,
            Permission::Read => &self.read,
        }
    }
}

#[derive(Debug, Clone)]
struct User {
    credential: Credential,
    tags: Vec<String>,
    permissions: HashMap<String, VhostPermissions>,
}

/// Who may log in, from where, and what they may do.
#[derive(Debug, Clone)]
pub struct AccessControl {
    users: HashMap<String, User>,
    loopback_users: HashSet<String>,
}

impl Default for AccessControl {
    /// RabbitMQ's defaults: guest/guest, full permissions on `/`, loopback
    /// only.
    fn default() -> Self {
        // The default user's expressions and credentials are known to be
        // valid.
        Self::new(vec![UserSpec::guest()], vec!["guest".into()]).unwrap_or_else(|_| AccessControl {
            users: HashMap::new(),
            loopback_users: HashSet::new(),
        })
    }
}

/// An expression as RabbitMQ applies it: `""` matches nothing (RabbitMQ
/// turns it into `^$`); otherwise a match anywhere in the name.
fn compile(user: &str, vhost: &str, what: &str, re: &str) -> Result<Regex, AccessConfigError> {
    let re = if re.is_empty() { "^$" } else { re };
    Regex::new(re).map_err(|e| {
        AccessConfigError(format!(
            "user '{user}': {what} permission on vhost '{vhost}' is not a valid regular expression: {e}"
        ))
    })
}

fn credential(spec: &UserSpec) -> Result<Credential, AccessConfigError> {
    let name = &spec.name;
    match (&spec.password, &spec.password_hash) {
        (Some(_), Some(_)) => Err(AccessConfigError(format!(
            "user '{name}': give password or password_hash, not both"
        ))),
        (None, None) => Err(AccessConfigError(format!(
            "user '{name}': password or password_hash is required"
        ))),
        (Some(p), None) => {
            if spec.hashing_algorithm.is_some() {
                return Err(AccessConfigError(format!(
                    "user '{name}': hashing_algorithm goes with password_hash"
                )));
            }
            Ok(Credential::Plain(p.clone()))
        }
        (None, Some(h)) => {
            let algorithm = match spec.hashing_algorithm.as_deref() {
                None | Some("rabbit_password_hashing_sha256") => HashAlgorithm::Sha256,
                Some("rabbit_password_hashing_sha512") => HashAlgorithm::Sha512,
                Some(other) => {
                    return Err(AccessConfigError(format!(
                        "user '{name}': hashing_algorithm '{other}' is not supported \
                         (rabbit_password_hashing_sha256 or rabbit_password_hashing_sha512)"
                    )));
                }
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(h.trim())
                .map_err(|e| {
                    AccessConfigError(format!("user '{name}': password_hash is not base64: {e}"))
                })?;
            let digest_len = match algorithm {
                HashAlgorithm::Sha256 => 32,
                HashAlgorithm::Sha512 => 64,
            };
            if bytes.len() != 4 + digest_len {
                return Err(AccessConfigError(format!(
                    "user '{name}': password_hash must be a 4-byte salt and a {digest_len}-byte hash \
                     ({} bytes in all), got {} bytes",
                    4 + digest_len,
                    bytes.len()
                )));
            }
            let salt = [bytes[0], bytes[1], bytes[2], bytes[3]];
            Ok(Credential::Hashed {
                algorithm,
                salt,
                hash: bytes[4..].to_vec(),
            })
        }
    }
}

impl AccessControl {
    /// Checks and compiles a configuration: every password or hash usable,
    /// every expression valid, no user twice.
    pub fn new(
        users: Vec<UserSpec>,
        loopback_users: Vec<String>,
    ) -> Result<Self, AccessConfigError> {
        let mut map = HashMap::new();
        for spec in users {
            if spec.name.is_empty() {
                return Err(AccessConfigError("a user has an empty name".into()));
            }
            if map.contains_key(&spec.name) {
                return Err(AccessConfigError(format!(
                    "user '{}' is configured twice",
                    spec.name
                )));
            }
            let credential = credential(&spec)?;
            let mut permissions = HashMap::new();
            for (vhost, p) in &spec.permissions {
                permissions.insert(
                    vhost.clone(),
                    VhostPermissions {
                        configure: compile(&spec.name, vhost, "configure", &p.configure)?,
                        write: compile(&spec.name, vhost, "write", &p.write)?,
                        read: compile(&spec.name, vhost, "read", &p.read)?,
                    },
                );
            }
            map.insert(
                spec.name.clone(),
                User {
                    credential,
                    tags: spec.tags.clone(),
                    permissions,
                },
            );
        }
        Ok(AccessControl {
            users: map,
            loopback_users: loopback_users.into_iter().collect(),
        })
    }

    /// Checks a user name and password from `peer`; returns the user name.
    pub fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<String, LoginRefused> {
        let refused = || LoginRefused::InvalidCredentials(user.to_string());
        let u = self.users.get(user).ok_or_else(refused)?;
        if !u.credential.verify(password) {
            return Err(refused());
        }
        if self.loopback_users.contains(user) && !is_loopback(peer) {
            return Err(LoginRefused::LoopbackOnly(user.to_string()));
        }
        Ok(user.to_string())
    }

    /// May `user` open `vhost` at all (any permissions there)? The vhost's
    /// existence is the caller's question; RabbitMQ asks it first.
    pub fn check_vhost_access(&self, user: &str, vhost: &str) -> Result<(), AccessRefused> {
        match self.users.get(user) {
            Some(u) if u.permissions.contains_key(vhost) => Ok(()),
            _ => Err(AccessRefused {
                message: format!("access to vhost '{vhost}' refused for user '{user}'"),
            }),
        }
    }

    /// May `user` do what needs `permission` on `resource`?
    pub fn check_resource_access(
        &self,
        user: &str,
        resource: Resource<'_>,
        permission: Permission,
    ) -> Result<(), AccessRefused> {
        let allowed = self
            .users
            .get(user)
            .and_then(|u| u.permissions.get(resource.vhost))
            .is_some_and(|p| p.regex(permission).is_match(resource.name));
        if allowed {
            Ok(())
        } else {
            Err(AccessRefused {
                message: format!("{permission} access to {resource} refused for user '{user}'"),
            })
        }
    }

    /// Whether `user` has the tag (RabbitMQ's user tags).
    pub fn has_tag(&self, user: &str, tag: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.tags.iter().any(|t| t == tag))
    }

    /// May `user` publish messages whose `user_id` names someone else
    /// (RabbitMQ's `impersonator` tag)?
    pub fn may_impersonate(&self, user: &str) -> bool {
        self.has_tag(user, "impersonator")
    }
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn user(name: &str, perms: &[(&str, &str, &str, &str)]) -> UserSpec {
        UserSpec {
            name: name.into(),
            password: Some("pw".into()),
            password_hash: None,
            hashing_algorithm: None,
            tags: vec![],
            permissions: perms
                .iter()
                .map(|(v, c, w, r)| {
                    (
                        v.to_string(),
                        PermissionSpec {
                            configure: c.to_string(),
                            write: w.to_string(),
                            read: r.to_string(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn guest_from_loopback_only() {
        let a = AccessControl::default();
        assert_eq!(a.authenticate("guest", "guest", LOCAL).unwrap(), "guest");
        assert_eq!(
            a.authenticate("guest", "guest", REMOTE),
            Err(LoginRefused::LoopbackOnly("guest".into()))
        );
        assert!(a.authenticate("guest", "nope", LOCAL).is_err());
        assert!(a.authenticate("nobody", "guest", LOCAL).is_err());
        assert!(a.check_vhost_access("guest", "/").is_ok());
        assert!(a.check_vhost_access("guest", "other").is_err());
        assert!(
            a.check_resource_access("guest", Resource::queue("/", "q"), Permission::Configure)
                .is_ok()
        );
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn permissions_as_rabbitmq_matches_them() {
        let a = AccessControl::new(
            vec![user("app", &[("orders", "^orders\\.", "x", "")])],
            vec![],
        )
        .unwrap();
        assert_eq!(a.authenticate("app", "pw", REMOTE).unwrap(), "app");
        assert!(a.check_vhost_access("app", "orders").is_ok());
        assert_eq!(
            a.check_vhost_access("app", "/").unwrap_err().message,
            "access to vhost '/' refused for user 'app'"
        );
        let ok = |r, p| a.check_resource_access("app", r, p).is_ok();
        assert!(ok(
            Resource::queue("orders", "orders.new"),
            Permission::Configure
        ));
        assert!(!ok(
            Resource::queue("orders", "billing"),
            Permission::Configure
        ));
        // Unanchored: "x" matches anywhere in the name.
        assert!(ok(
            Resource::exchange("orders", "the-x-change"),
            Permission::Write
        ));
        // "" matches nothing, not even the default exchange.
        assert!(!ok(Resource::queue("orders", "anything"), Permission::Read));
        assert!(!ok(Resource::exchange("orders", ""), Permission::Read));
        let e = a
            .check_resource_access("app", Resource::exchange("orders", ""), Permission::Write)
            .unwrap_err();
        assert_eq!(
            e.message,
            "write access to exchange 'amq.default' in vhost 'orders' refused for user 'app'"
        );
        let e = a
            .check_resource_access("app", Resource::queue("orders", "q"), Permission::Read)
            .unwrap_err();
        assert_eq!(
            e.message,
            "read access to queue 'q' in vhost 'orders' refused for user 'app'"
        );
        // No permissions on the vhost at all: refused too.
        assert!(!ok(Resource::queue("/", "orders.x"), Permission::Configure));
    }

    #[test]
    fn rabbitmq_password_hashes() {
        let hash = hash_password_sha256([1, 2, 3, 4], "s3cret");
        let spec = UserSpec {
            password: None,
            password_hash: Some(hash.clone()),
            ..user("h", &[("/", ".*", ".*", ".*")])
        };
        let a = AccessControl::new(vec![spec.clone()], vec![]).unwrap();
        assert!(a.authenticate("h", "s3cret", LOCAL).is_ok());
        assert!(a.authenticate("h", "s3cre", LOCAL).is_err());
        assert!(a.authenticate("h", &hash, LOCAL).is_err());
        // sha512 of the same salt and password.
        let mut raw = vec![1, 2, 3, 4];
        raw.extend_from_slice(&salted_hash(HashAlgorithm::Sha512, &[1, 2, 3, 4], "s3cret"));
        let spec512 = UserSpec {
            password_hash: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            hashing_algorithm: Some("rabbit_password_hashing_sha512".into()),
            ..spec.clone()
        };
        let a = AccessControl::new(vec![spec512], vec![]).unwrap();
        assert!(a.authenticate("h", "s3cret", LOCAL).is_ok());
        // A SHA-256 hash read as SHA-512 has the wrong length.
        let bad = UserSpec {
            hashing_algorithm: Some("rabbit_password_hashing_sha512".into()),
            ..spec.clone()
        };
        assert!(AccessControl::new(vec![bad], vec![]).is_err());
        let md5 = UserSpec {
            hashing_algorithm: Some("rabbit_password_hashing_md5".into()),
            ..spec.clone()
        };
        assert!(AccessControl::new(vec![md5], vec![]).is_err());
        let both = UserSpec {
            password: Some("x".into()),
            ..spec
        };
        assert!(AccessControl::new(vec![both], vec![]).is_err());
    }

    /// A hash RabbitMQ's management UI made for the password "1"
    /// (SHA-256, the default): RabbitMQ's hashes work here unchanged.
    #[test]
    fn hash_made_by_rabbitmq() {
        let spec = UserSpec {
            password: None,
            password_hash: Some("y4xPTRVfzXg68sz9ALqeQzARam3CwnGo53xS752cDV5+Utzh".into()),
            ..user("r", &[("/", ".*", ".*", ".*")])
        };
        let a = AccessControl::new(vec![spec], vec![]).unwrap();
        assert!(a.authenticate("r", "1", LOCAL).is_ok());
        assert!(a.authenticate("r", "2", LOCAL).is_err());
        let salt = [0xcb, 0x8c, 0x4f, 0x4d];
        assert_eq!(
            hash_password_sha256(salt, "1"),
            "y4xPTRVfzXg68sz9ALqeQzARam3CwnGo53xS752cDV5+Utzh"
        );
    }

    #[test]
    fn bad_configurations_are_named() {
        let e = AccessControl::new(vec![user("u", &[("/", "(", ".*", ".*")])], vec![]).unwrap_err();
        assert!(e.0.contains("user 'u'") && e.0.contains("configure"), "{e}");
        let e = AccessControl::new(vec![user("u", &[]), user("u", &[])], vec![]).unwrap_err();
        assert!(e.0.contains("twice"), "{e}");
    }

    #[test]
    fn debug_output_hides_passwords() {
        let a = AccessControl::default();
        let text = format!("{a:?}");
        assert!(
            text.contains("Plain(..)") && !text.contains("Plain(\""),
            "{text}"
        );
        let spec = UserSpec::guest();
        assert!(!format!("{spec:?}").contains("Some(\"guest\")"), "{spec:?}");
    }

    #[test]
    fn impersonator_tag() {
        let mut spec = user("svc", &[("/", ".*", ".*", ".*")]);
        spec.tags = vec!["impersonator".into()];
        let a = AccessControl::new(vec![spec, user("u", &[])], vec![]).unwrap();
        assert!(a.may_impersonate("svc"));
        assert!(!a.may_impersonate("u"));
    }
}
