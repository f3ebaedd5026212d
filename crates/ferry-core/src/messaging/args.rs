//! Declare arguments: queue arguments parsed and validated as RabbitMQ does
//! (`rabbit_amqqueue:declare_args/0`), and the equivalence checks of a
//! re-declare with RabbitMQ's wording (`rabbit_misc:assert_args_equivalence`).

use super::value::{self, as_int, as_str};
use super::{
    Arguments, ExchangeKind, ExchangeSpec, FieldValue, MessagingError, Overflow, QueueType,
    argument,
};

/// Priority levels a queue may have (`x-max-priority`), as RabbitMQ allows.
pub const PRIORITY_MAX: i64 = 255;

/// The queue arguments Ferry understands, checked for equivalence on
/// re-declare in this order.
const QUEUE_EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-delivery-limit",
];

/// `queue 'q' in vhost '/'`: RabbitMQ's `rs/1` of a resource.
pub(crate) fn rs(kind: &str, name: &str, vhost: &str) -> String {
    format!("{kind} '{name}' in vhost '{vhost}'")
}

/// A queue's arguments, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<Overflow>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u64>,
    pub queue_type: Option<QueueType>,
}

impl QueueArgs {
    pub fn overflow(&self) -> Overflow {
        self.overflow.unwrap_or(Overflow::DropHead)
    }

    pub fn queue_type(&self) -> QueueType {
        self.queue_type.unwrap_or(QueueType::Classic)
    }
}

fn invalid(key: &str, resource: &str, term: String) -> MessagingError {
    MessagingError::InvalidArgument {
        name: key.to_string(),
        reason: format!("for {resource}: {term}"),
    }
}

fn unacceptable(key: &str, resource: &str, v: &FieldValue) -> MessagingError {
    invalid(
        key,
        resource,
        format!("{{unacceptable_type,{}}}", value::type_name(v)),
    )
}

fn non_neg_int(key: &str, resource: &str, v: &FieldValue) -> Result<u64, MessagingError> {
    let i = as_int(v).ok_or_else(|| unacceptable(key, resource, v))?;
    u64::try_from(i).map_err(|_| invalid(key, resource, format!("{{value_negative,{i}}}")))
}

fn string_arg(key: &str, resource: &str, v: &FieldValue) -> Result<String, MessagingError> {
    let s = as_str(v).ok_or_else(|| unacceptable(key, resource, v))?;
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// Parses and validates a queue's arguments. Unknown arguments are ignored,
/// as RabbitMQ ignores them.
pub(crate) fn parse_queue_args(
    args: &Arguments,
    name: &str,
    vhost: &str,
) -> Result<QueueArgs, MessagingError> {
    let resource = rs("queue", name, vhost);
    let r = resource.as_str();
    let mut q = QueueArgs::default();
    for (key, v) in args {
        match key.as_str() {
            "x-message-ttl" => q.message_ttl_ms = Some(non_neg_int(key, r, v)?),
            "x-expires" => {
                let ms = non_neg_int(key, r, v)?;
                if ms == 0 {
                    return Err(invalid(key, r, "{value_zero,0}".to_string()));
                }
                q.expires_ms = Some(ms);
            }
            "x-max-length" => q.max_length = Some(non_neg_int(key, r, v)?),
            "x-max-length-bytes" => q.max_length_bytes = Some(non_neg_int(key, r, v)?),
            "x-delivery-limit" => q.delivery_limit = Some(non_neg_int(key, r, v)?),
            "x-max-priority" => {
                let p = non_neg_int(key, r, v)?;
                if p > PRIORITY_MAX as u64 {
                    return Err(invalid(key, r, format!("{{value_out_of_range,{p}}}")));
                }
                q.max_priority = Some(p as u8);
            }
            "x-overflow" => {
                let s = string_arg(key, r, v)?;
                q.overflow = Some(match s.as_str() {
                    "drop-head" => Overflow::DropHead,
                    "reject-publish" => Overflow::RejectPublish,
                    "reject-publish-dlx" => Overflow::RejectPublishDlx,
                    other => {
                        return Err(invalid(
                            key,
                            r,
                            format!("{{invalid_overflow,<<\"{other}\">>}}"),
                        ));
                    }
                });
            }
            "x-dead-letter-exchange" => q.dead_letter_exchange = Some(string_arg(key, r, v)?),
            "x-dead-letter-routing-key" => {
                q.dead_letter_routing_key = Some(string_arg(key, r, v)?);
            }
            "x-single-active-consumer" => match v {
                FieldValue::Bool(b) => q.single_active_consumer = *b,
                other => return Err(unacceptable(key, r, other)),
            },
            "x-queue-type" => {
                let s = string_arg(key, r, v)?;
                q.queue_type = Some(match s.as_str() {
                    "classic" => QueueType::Classic,
                    "quorum" => QueueType::Quorum,
                    "stream" => QueueType::Stream,
                    other => {
                        return Err(invalid(
                            key,
                            r,
                            format!("{{unsupported_queue_type,<<\"{other}\">>}}"),
                        ));
                    }
                });
            }
            _ => {}
        }
    }
    if q.dead_letter_routing_key.is_some() && q.dead_letter_exchange.is_none() {
        return Err(invalid(
            "x-dead-letter-routing-key",
            r,
            "routing_key_but_no_dlx_defined".to_string(),
        ));
    }
    Ok(q)
}

/// `the value '2' of type 'byte'`, or `none`.
fn val(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            value::display(v),
            value::type_name(v)
        ),
    }
}

fn fail(key: &str, resource: &str, received: String, current: String) -> MessagingError {
    MessagingError::PreconditionFailed(format!(
        "inequivalent arg '{key}' for {resource}: received {received} but current is {current}"
    ))
}

/// Compares a re-declare's field with the current one.
pub(crate) fn field_equivalence(
    key: &str,
    resource: &str,
    current: &str,
    received: &str,
) -> Result<(), MessagingError> {
    if current == received {
        return Ok(());
    }
    Err(fail(
        key,
        resource,
        format!("'{received}'"),
        format!("'{current}'"),
    ))
}

/// Compares the arguments `keys` of a re-declare with the current ones.
pub(crate) fn args_equivalence(
    current: &Arguments,
    received: &Arguments,
    resource: &str,
    keys: &[&str],
) -> Result<(), MessagingError> {
    for key in keys {
        let (c, r) = (argument(current, key), argument(received, key));
        match (c, r) {
            (None, None) => {}
            (Some(c), Some(r)) if value::equivalent(c, r) => {}
            (Some(c), Some(r)) if value::type_name(c) == value::type_name(r) => {
                return Err(fail(
                    key,
                    resource,
                    format!("'{}'", value::display(r)),
                    format!("'{}'", value::display(c)),
                ));
            }
            (Some(FieldValue::Int(c)), Some(FieldValue::Int(r))) => {
                return Err(fail(key, resource, format!("'{r}'"), format!("'{c}'")));
            }
            // Classic queues need not say so.
            (None, Some(FieldValue::Str(s))) | (Some(FieldValue::Str(s)), None)
                if *key == "x-queue-type" && &s[..] == b"classic" => {}
            (c, r) => return Err(fail(key, resource, val(r), val(c))),
        }
    }
    Ok(())
}

pub(crate) fn queue_args_equivalence(
    current: &Arguments,
    received: &Arguments,
    resource: &str,
) -> Result<(), MessagingError> {
    args_equivalence(current, received, resource, QUEUE_EQUIVALENCE_KEYS)
}

pub(crate) fn kind_name(kind: ExchangeKind) -> &'static str {
    match kind {
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
        ExchangeKind::Topic => "topic",
        ExchangeKind::Headers => "headers",
        ExchangeKind::Delayed(_) => "x-delayed-message",
    }
}

/// RabbitMQ's `rabbit_exchange:assert_equivalence`.
pub(crate) fn exchange_equivalence(
    current: &ExchangeSpec,
    received: &ExchangeSpec,
    vhost: &str,
) -> Result<(), MessagingError> {
    let resource = rs("exchange", &current.name, vhost);
    field_equivalence(
        "type",
        &resource,
        kind_name(current.kind),
        kind_name(received.kind),
    )?;
    field_equivalence(
        "durable",
        &resource,
        &current.durable.to_string(),
        &received.durable.to_string(),
    )?;
    field_equivalence(
        "auto_delete",
        &resource,
        &current.auto_delete.to_string(),
        &received.auto_delete.to_string(),
    )?;
    field_equivalence(
        "internal",
        &resource,
        &current.internal.to_string(),
        &received.internal.to_string(),
    )?;
    let keys: &[&str] = match current.kind {
        ExchangeKind::Delayed(_) => &["alternate-exchange", "x-delayed-type"],
        _ => &["alternate-exchange"],
    };
    args_equivalence(&current.arguments, &received.arguments, &resource, keys)?;
    if let (ExchangeKind::Delayed(a), ExchangeKind::Delayed(b)) = (current.kind, received.kind)
        && a != b
    {
        return Err(fail(
            "x-delayed-type",
            &resource,
            format!("'{b:?}'").to_lowercase(),
            format!("'{a:?}'").to_lowercase(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn s(v: &str) -> FieldValue {
        FieldValue::Str(Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn parses_every_argument() {
        let args = vec![
            ("x-message-ttl".into(), FieldValue::Int(1000)),
            ("x-expires".into(), FieldValue::Int(5000)),
            ("x-max-length".into(), FieldValue::Int(10)),
            ("x-max-length-bytes".into(), FieldValue::Int(100)),
            ("x-overflow".into(), s("reject-publish-dlx")),
            ("x-dead-letter-exchange".into(), s("dlx")),
            ("x-dead-letter-routing-key".into(), s("dead")),
            ("x-max-priority".into(), FieldValue::Int(10)),
            ("x-single-active-consumer".into(), FieldValue::Bool(true)),
            ("x-delivery-limit".into(), FieldValue::Int(3)),
            ("x-queue-type".into(), s("quorum")),
            ("x-unknown".into(), FieldValue::Void),
        ];
        let q = parse_queue_args(&args, "q", "/").unwrap();
        assert_eq!(q.message_ttl_ms, Some(1000));
        assert_eq!(q.expires_ms, Some(5000));
        assert_eq!(q.max_length, Some(10));
        assert_eq!(q.max_length_bytes, Some(100));
        assert_eq!(q.overflow(), Overflow::RejectPublishDlx);
        assert_eq!(q.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(q.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(q.max_priority, Some(10));
        assert!(q.single_active_consumer);
        assert_eq!(q.delivery_limit, Some(3));
        assert_eq!(q.queue_type(), QueueType::Quorum);
    }

    #[test]
    fn refuses_bad_values_as_rabbitmq_does() {
        let bad = [
            ("x-max-length", FieldValue::Int(-1), "{value_negative,-1}"),
            ("x-expires", FieldValue::Int(0), "{value_zero,0}"),
            ("x-message-ttl", s("10"), "{unacceptable_type,longstr}"),
            (
                "x-max-priority",
                FieldValue::Int(256),
                "{value_out_of_range,256}",
            ),
            ("x-overflow", s("drop-tail"), "invalid_overflow"),
            ("x-queue-type", s("lazy"), "unsupported_queue_type"),
            (
                "x-single-active-consumer",
                FieldValue::Int(1),
                "unacceptable_type",
            ),
        ];
        for (key, v, why) in bad {
            let err = parse_queue_args(&vec![(key.to_string(), v)], "q", "/").unwrap_err();
            let MessagingError::InvalidArgument { name, reason } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(name, key);
            assert!(reason.contains(why), "{reason}");
            assert!(reason.contains("queue 'q' in vhost '/'"), "{reason}");
        }
        let err = parse_queue_args(
            &vec![("x-dead-letter-routing-key".into(), s("k"))],
            "q",
            "/",
        )
        .unwrap_err();
        assert!(matches!(err, MessagingError::InvalidArgument { .. }));
    }

    #[test]
    fn equivalence_errors_use_rabbitmq_wording() {
        let r = rs("queue", "q", "/");
        let cur = vec![("x-message-ttl".to_string(), FieldValue::Int(300000))];
        let new = vec![("x-message-ttl".to_string(), FieldValue::Int(300))];
        assert_eq!(
            queue_args_equivalence(&cur, &new, &r).unwrap_err(),
            MessagingError::PreconditionFailed(
                "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '300' but current is '300000'".into()
            )
        );
        assert_eq!(
            queue_args_equivalence(&cur, &vec![], &r).unwrap_err(),
            MessagingError::PreconditionFailed(
                "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '300000' of type 'signedint'".into()
            )
        );
        // Unchecked arguments and an explicit classic type are fine.
        let with_classic = vec![
            ("x-queue-type".to_string(), s("classic")),
            ("x-other".to_string(), FieldValue::Int(1)),
        ];
        queue_args_equivalence(&vec![], &with_classic, &r).unwrap();
        assert_eq!(
            field_equivalence("durable", &rs("exchange", "x", "/"), "false", "true").unwrap_err(),
            MessagingError::PreconditionFailed(
                "inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'".into()
            )
        );
    }
}
