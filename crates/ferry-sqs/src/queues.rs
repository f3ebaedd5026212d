//! Queue actions: CreateQueue, DeleteQueue, GetQueueUrl, ListQueues,
//! Get/SetQueueAttributes, PurgeQueue, tags, permissions,
//! ListDeadLetterSourceQueues; and the queue attributes' rules.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::errors::{Code, SqsResult, err, invalid_value, missing, no_queue};
use crate::http::SqsRequest;
use crate::params::{Params, int_in, opt_str, req_str, string_list, string_map};
use crate::store::{Permission, QueueMeta};
use crate::{QueueState, Runtime, Sqs, now_ms};

/// Queue-name characters before a `.fifo` suffix, at most.
const QUEUE_NAME_CHARS_MAX: usize = 80;
const TAGS_MAX: usize = 50;
const LIST_QUEUES_MAX: i64 = 1000;
/// Actions one AddPermission statement may allow (SQS: 7).
const PERMISSION_ACTIONS_MAX: usize = 7;

/// Attributes computed from the queue's state, readable only.
const READ_ONLY: &[&str] = &[
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
];

const SETTABLE: &[&str] = &[
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "Policy",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

const FIFO_ONLY: &[&str] = &[
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

pub(crate) fn new_state(meta: QueueMeta) -> QueueState {
    QueueState {
        name: meta.name.clone(),
        incarnation: meta.incarnation.clone(),
        fifo: meta.fifo,
        meta: Mutex::new(meta),
        runtime: Mutex::new(Runtime::default()),
        fifo_receive: tokio::sync::Mutex::new(()),
        released: Notify::new(),
    }
}

fn defaults(fifo: bool) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("DelaySeconds", "0"),
        ("MaximumMessageSize", "1048576"),
        ("MessageRetentionPeriod", "345600"),
        ("ReceiveMessageWaitTimeSeconds", "0"),
        ("VisibilityTimeout", "30"),
        ("SqsManagedSseEnabled", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if fifo {
        for (k, v) in [
            ("FifoQueue", "true"),
            ("ContentBasedDeduplication", "false"),
            ("DeduplicationScope", "queue"),
            ("FifoThroughputLimit", "perQueue"),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m
}

fn bad_attr(name: &str) -> crate::errors::SqsError {
    err(
        Code::InvalidAttributeValue,
        format!("Invalid value for the parameter {name}."),
    )
}

fn bad_attr_reason(name: &str, reason: &str) -> crate::errors::SqsError {
    err(
        Code::InvalidAttributeValue,
        format!("Invalid value for the parameter {name}. Reason: {reason}."),
    )
}

fn unknown_attr(name: &str) -> crate::errors::SqsError {
    err(
        Code::InvalidAttributeName,
        format!("Unknown Attribute {name}."),
    )
}

fn int_attr(name: &str, v: &str, min: i64, max: i64) -> SqsResult<String> {
    match v.trim().parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n.to_string()),
        _ => Err(bad_attr(name)),
    }
}

fn bool_attr(name: &str, v: &str) -> SqsResult<String> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok("true".into()),
        "false" => Ok("false".into()),
        _ => Err(bad_attr(name)),
    }
}

/// SQS allows FifoThroughputLimit=perMessageGroupId only with
/// DeduplicationScope=messageGroup; `attrs` are all of a queue's.
fn check_throughput(attrs: &BTreeMap<String, String>) -> SqsResult<()> {
    let scope = attrs.get("DeduplicationScope").map(String::as_str);
    let limit = attrs.get("FifoThroughputLimit").map(String::as_str);
    if limit == Some("perMessageGroupId") && scope != Some("messageGroup") {
        return Err(bad_attr_reason(
            "FifoThroughputLimit",
            "The perMessageGroupId value is allowed only when the value for DeduplicationScope is messageGroup",
        ));
    }
    Ok(())
}

/// A redrive policy as SQS normalizes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedrivePolicy {
    pub target_arn: String,
    pub max_receive_count: u32,
}

pub(crate) fn parse_redrive(v: &str) -> Option<RedrivePolicy> {
    let j: Value = serde_json::from_str(v).ok()?;
    let target_arn = j.get("deadLetterTargetArn")?.as_str()?.to_string();
    let count = match j.get("maxReceiveCount")? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some(RedrivePolicy {
        target_arn,
        max_receive_count: u32::try_from(count).ok()?,
    })
}

impl Sqs {
    /// Checks and normalizes one settable attribute for a queue of this
    /// type (`name` is the queue's).
    fn check_attribute(
        &self,
        queue: &str,
        fifo: bool,
        key: &str,
        value: &str,
        creating: bool,
    ) -> SqsResult<String> {
        if READ_ONLY.contains(&key) || !SETTABLE.contains(&key) {
            return Err(unknown_attr(key));
        }
        if FIFO_ONLY.contains(&key) && !fifo {
            return Err(unknown_attr(key));
        }
        Ok(match key {
            "DelaySeconds" => int_attr(key, value, 0, 900)?,
            "MaximumMessageSize" => int_attr(key, value, 1024, 1_048_576)?,
            "MessageRetentionPeriod" => int_attr(key, value, 60, 1_209_600)?,
            "ReceiveMessageWaitTimeSeconds" => int_attr(key, value, 0, 20)?,
            "VisibilityTimeout" => int_attr(key, value, 0, 43_200)?,
            "KmsDataKeyReusePeriodSeconds" => int_attr(key, value, 60, 86_400)?,
            "SqsManagedSseEnabled" | "ContentBasedDeduplication" => bool_attr(key, value)?,
            "KmsMasterKeyId" => value.to_string(),
            "Policy" => {
                if !value.is_empty() && serde_json::from_str::<Value>(value).is_err() {
                    return Err(bad_attr_reason(key, "Policy must be a JSON document"));
                }
                value.to_string()
            }
            "FifoQueue" => {
                let v = bool_attr(key, value)?;
                if !creating && (v == "true") != fifo {
                    return Err(bad_attr_reason(
                        key,
                        "Modifying queue type is not supported",
                    ));
                }
                if v == "true" && !queue.ends_with(".fifo") {
                    return Err(err(
                        Code::InvalidParameterValue,
                        "The name of a FIFO queue can only include alphanumeric characters, hyphens, or underscores, must end with .fifo suffix and be 1 to 80 in length.",
                    ));
                }
                v
            }
            "DeduplicationScope" => match value {
                "messageGroup" | "queue" => value.to_string(),
                _ => return Err(bad_attr(key)),
            },
            "FifoThroughputLimit" => match value {
                "perQueue" | "perMessageGroupId" => value.to_string(),
                _ => return Err(bad_attr(key)),
            },
            "RedrivePolicy" => {
                if value.is_empty() {
                    return Ok(String::new());
                }
                let Some(rp) = parse_redrive(value) else {
                    return Err(bad_attr_reason(
                        key,
                        "Redrive policy is not a valid JSON map with deadLetterTargetArn and maxReceiveCount",
                    ));
                };
                if !(1..=1000).contains(&rp.max_receive_count) {
                    return Err(invalid_value(
                        key,
                        value,
                        "Invalid value for maxReceiveCount: must be an integer from 1 to 1000",
                    ));
                }
                let target = self
                    .name_of_arn(&rp.target_arn)
                    .and_then(|n| self.queues_read().get(n).cloned());
                let Some(target) = target else {
                    return Err(invalid_value(
                        key,
                        value,
                        "Dead-letter target does not exist",
                    ));
                };
                if target.fifo != fifo {
                    return Err(invalid_value(
                        key,
                        value,
                        "Dead-letter target must be of the same type as the source queue",
                    ));
                }
                if target.name == queue {
                    return Err(invalid_value(
                        key,
                        value,
                        "Dead-letter target cannot be the source queue",
                    ));
                }
                if let Some(allow) = target.attr("RedriveAllowPolicy")
                    && !redrive_allowed(&allow, &self.arn(queue))
                {
                    return Err(invalid_value(
                        key,
                        value,
                        "Dead-letter target's RedriveAllowPolicy does not allow this source queue",
                    ));
                }
                json!({
                    "deadLetterTargetArn": rp.target_arn,
                    "maxReceiveCount": rp.max_receive_count,
                })
                .to_string()
            }
            "RedriveAllowPolicy" => {
                if value.is_empty() {
                    return Ok(String::new());
                }
                let j: Value = serde_json::from_str(value).map_err(|_| bad_attr(key))?;
                let permission = j.get("redrivePermission").and_then(Value::as_str);
                let sources = j.get("sourceQueueArns");
                match (permission, sources) {
                    (Some("allowAll" | "denyAll"), None) => {}
                    (Some("byQueue"), Some(Value::Array(a))) if !a.is_empty() && a.len() <= 10 => {}
                    _ => {
                        return Err(invalid_value(
                            key,
                            value,
                            "redrivePermission must be allowAll, denyAll, or byQueue with 1 to 10 sourceQueueArns",
                        ));
                    }
                }
                j.to_string()
            }
            _ => return Err(unknown_attr(key)),
        })
    }

    fn check_attributes(
        &self,
        queue: &str,
        fifo: bool,
        attrs: &BTreeMap<String, String>,
        creating: bool,
    ) -> SqsResult<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (k, v) in attrs {
            out.insert(
                k.clone(),
                self.check_attribute(queue, fifo, k, v, creating)?,
            );
        }
        Ok(out)
    }

    pub(crate) fn create_queue(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let name = req_str(p, "QueueName")?;
        let attrs = string_map(p, "Attributes")?;
        let mut tags = string_map(p, "tags")?;
        tags.extend(string_map(p, "Tags")?);
        let fifo_attr = attrs
            .get("FifoQueue")
            .map(|v| v.eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        let base = name.strip_suffix(".fifo");
        let valid_base = |b: &str| {
            !b.is_empty()
                && b.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.len() > QUEUE_NAME_CHARS_MAX {
            return Err(err(
                Code::InvalidParameterValue,
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length",
            ));
        }
        match (fifo_attr, base) {
            (true, Some(b)) if valid_base(b) => {}
            (true, _) => {
                return Err(err(
                    Code::InvalidParameterValue,
                    "The name of a FIFO queue can only include alphanumeric characters, hyphens, or underscores, must end with .fifo suffix and be 1 to 80 in length.",
                ));
            }
            (false, None) if valid_base(name) => {}
            (false, _) => {
                return Err(err(
                    Code::InvalidParameterValue,
                    "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length",
                ));
            }
        }
        let fifo = fifo_attr;
        let checked = self.check_attributes(name, fifo, &attrs, true)?;
        if tags.len() > TAGS_MAX {
            return Err(err(
                Code::InvalidParameterValue,
                format!("Too many tags: at most {TAGS_MAX} per queue."),
            ));
        }
        let mut attributes = defaults(fifo);
        attributes.extend(checked.clone());
        check_throughput(&attributes)?;
        let mut queues = self.queues_mut();
        if let Some(existing) = queues.get(name) {
            let meta = existing.meta();
            for (k, v) in &checked {
                let current = meta.attributes.get(k).map(String::as_str).unwrap_or("");
                if current != v {
                    return Err(err(
                        Code::QueueNameExists,
                        format!(
                            "A queue already exists with the same name and a different value for attribute {k}"
                        ),
                    ));
                }
            }
            drop(meta);
            return Ok(json!({ "QueueUrl": self.queue_url(req, name) }));
        }
        {
            let mut deleted = self.deleted.lock().unwrap_or_else(|e| e.into_inner());
            let window = self.config.deleted_recently;
            deleted.retain(|_, at| at.elapsed() < window);
            if deleted.contains_key(name) {
                return Err(err(
                    Code::QueueDeletedRecently,
                    format!(
                        "You must wait {} seconds after deleting a queue before you can create another with the same name.",
                        window.as_secs()
                    ),
                ));
            }
        }
        self.declare_engine_queue(name)?;
        let now_s = now_ms() / 1000;
        let meta = QueueMeta {
            name: name.to_string(),
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            fifo,
            created_s: now_s,
            modified_s: now_s,
            attributes,
            tags,
            permissions: BTreeMap::new(),
        };
        queues.insert(name.to_string(), Arc::new(new_state(meta)));
        drop(queues);
        self.save()?;
        Ok(json!({ "QueueUrl": self.queue_url(req, name) }))
    }

    pub(crate) fn delete_queue(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        // A queue held unavailable (its log could not be opened) keeps its
        // files for the operator: refused, as every other use of it is.
        if let Err(e) = self.engine_queue(&q.name)
            && e.code == Code::InternalError
        {
            return Err(e);
        }
        self.queues_mut().remove(&q.name);
        self.deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(q.name.clone(), Instant::now());
        self.save()?;
        self.cancel_tasks_of(&self.arn(&q.name));
        if let Err(e) = self.messaging.delete_queue(
            &self.config.vhost,
            &q.name,
            false,
            false,
            crate::CONNECTION,
        ) {
            tracing::warn!(queue = %q.name, error = %e, "could not delete the engine queue of an SQS queue");
        }
        Ok(json!({}))
    }

    pub(crate) fn get_queue_url(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let name = req_str(p, "QueueName")?;
        if !self.queues_read().contains_key(name) {
            return Err(no_queue());
        }
        Ok(json!({ "QueueUrl": self.queue_url(req, name) }))
    }

    pub(crate) fn list_queues(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let prefix = opt_str(p, "QueueNamePrefix").unwrap_or("");
        let max = int_in(p, "MaxResults", 1, LIST_QUEUES_MAX)?;
        let after = match opt_str(p, "NextToken") {
            Some(t) if !t.is_empty() => Some(decode_token(t)?),
            _ => None,
        };
        let names: Vec<String> = self
            .queues_read()
            .keys()
            .filter(|n| n.starts_with(prefix))
            .filter(|n| after.as_ref().is_none_or(|a| n.as_str() > a.as_str()))
            .cloned()
            .collect();
        page(names, max, |n| self.queue_url(req, n), "QueueUrls", false)
    }

    pub(crate) fn get_queue_attributes(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let names = string_list(p, "AttributeNames");
        let all = names.iter().any(|n| n == "All");
        for n in &names {
            if n != "All" && !READ_ONLY.contains(&n.as_str()) && !SETTABLE.contains(&n.as_str()) {
                return Err(unknown_attr(n));
            }
        }
        let wanted = |n: &str| all || names.iter().any(|x| x == n);
        let mut out = Map::new();
        let meta = q.meta().clone();
        let counts = self.engine_queue(&q.name)?.counts();
        let computed = [
            ("QueueArn", self.arn(&q.name)),
            ("ApproximateNumberOfMessages", counts.ready.to_string()),
            (
                "ApproximateNumberOfMessagesNotVisible",
                counts.in_flight.to_string(),
            ),
            (
                "ApproximateNumberOfMessagesDelayed",
                counts.delayed.to_string(),
            ),
            ("CreatedTimestamp", meta.created_s.to_string()),
            ("LastModifiedTimestamp", meta.modified_s.to_string()),
        ];
        for (k, v) in computed {
            if wanted(k) {
                out.insert(k.into(), Value::String(v));
            }
        }
        for (k, v) in &meta.attributes {
            if wanted(k) && !v.is_empty() {
                out.insert(k.clone(), Value::String(v.clone()));
            }
        }
        if out.is_empty() {
            return Ok(json!({}));
        }
        Ok(json!({ "Attributes": out }))
    }

    pub(crate) fn set_queue_attributes(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let attrs = string_map(p, "Attributes")?;
        if attrs.is_empty() {
            return Err(missing("Attributes"));
        }
        let checked = self.check_attributes(&q.name, q.fifo, &attrs, false)?;
        {
            let mut meta = q.meta();
            let mut merged = meta.attributes.clone();
            merged.extend(checked);
            check_throughput(&merged)?;
            meta.attributes = merged;
            meta.modified_s = now_ms() / 1000;
        }
        self.save()?;
        Ok(json!({}))
    }

    pub(crate) fn purge_queue(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let engine = self.engine_queue(&q.name)?;
        {
            let mut rt = q.runtime();
            if rt
                .last_purge
                .is_some_and(|t| t.elapsed() < self.config.purge_interval)
            {
                return Err(err(
                    Code::PurgeQueueInProgress,
                    format!(
                        "Only one PurgeQueue operation on {} is allowed every {} seconds.",
                        q.name,
                        self.config.purge_interval.as_secs()
                    ),
                ));
            }
            rt.last_purge = Some(Instant::now());
            rt.purged_before_ms = now_ms();
        }
        engine.purge()?;
        Ok(json!({}))
    }

    pub(crate) fn tag_queue(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let tags = string_map(p, "Tags")?;
        if tags.is_empty() {
            return Err(missing("Tags"));
        }
        for (k, v) in &tags {
            if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
                return Err(invalid_value(
                    "Tags",
                    k,
                    "Tag keys must be 1 to 128 characters and values at most 256",
                ));
            }
        }
        {
            let mut meta = q.meta();
            let mut merged = meta.tags.clone();
            merged.extend(tags);
            if merged.len() > TAGS_MAX {
                return Err(err(
                    Code::InvalidParameterValue,
                    format!("Too many tags: at most {TAGS_MAX} per queue."),
                ));
            }
            meta.tags = merged;
        }
        self.save()?;
        Ok(json!({}))
    }

    pub(crate) fn untag_queue(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let keys = string_list(p, "TagKeys");
        if keys.is_empty() {
            return Err(missing("TagKeys"));
        }
        {
            let mut meta = q.meta();
            for k in keys {
                meta.tags.remove(&k);
            }
        }
        self.save()?;
        Ok(json!({}))
    }

    pub(crate) fn list_queue_tags(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let tags = q.meta().tags.clone();
        if tags.is_empty() {
            return Ok(json!({}));
        }
        Ok(json!({ "Tags": tags }))
    }

    pub(crate) fn add_permission(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let label = req_str(p, "Label")?;
        let accounts = string_list(p, "AWSAccountIds");
        let actions = string_list(p, "Actions");
        if accounts.is_empty() {
            return Err(missing("AWSAccountIds"));
        }
        if actions.is_empty() {
            return Err(missing("Actions"));
        }
        if actions.len() > PERMISSION_ACTIONS_MAX {
            return Err(err(
                Code::OverLimit,
                format!(
                    "{} Actions were found, maximum allowed is {PERMISSION_ACTIONS_MAX}.",
                    actions.len()
                ),
            ));
        }
        if label.len() > 80
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid_value(
                "Label",
                label,
                "Must be 1 to 80 alphanumeric characters, hyphens or underscores",
            ));
        }
        {
            let mut meta = q.meta();
            if meta.permissions.contains_key(label) {
                return Err(invalid_value("Label", label, "Already exists"));
            }
            meta.permissions
                .insert(label.to_string(), Permission { accounts, actions });
            let policy = self.policy_of(&q.name, &meta.permissions);
            meta.attributes.insert("Policy".into(), policy);
        }
        self.save()?;
        Ok(json!({}))
    }

    pub(crate) fn remove_permission(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let label = req_str(p, "Label")?;
        {
            let mut meta = q.meta();
            if meta.permissions.remove(label).is_none() {
                return Err(invalid_value(
                    "Label",
                    label,
                    "can't find label on existing policy",
                ));
            }
            let policy = if meta.permissions.is_empty() {
                String::new()
            } else {
                self.policy_of(&q.name, &meta.permissions)
            };
            meta.attributes.insert("Policy".into(), policy);
        }
        self.save()?;
        Ok(json!({}))
    }

    /// The policy document SQS builds from AddPermission labels.
    fn policy_of(&self, queue: &str, perms: &BTreeMap<String, Permission>) -> String {
        let arn = self.arn(queue);
        let statements: Vec<Value> = perms
            .iter()
            .map(|(label, p)| {
                let principals: Vec<String> = p
                    .accounts
                    .iter()
                    .map(|a| format!("arn:aws:iam::{a}:root"))
                    .collect();
                let actions: Vec<String> = p.actions.iter().map(|a| format!("SQS:{a}")).collect();
                json!({
                    "Sid": label,
                    "Effect": "Allow",
                    "Principal": {"AWS": principals},
                    "Action": actions,
                    "Resource": arn,
                })
            })
            .collect();
        json!({
            "Version": "2012-10-17",
            "Id": format!("{arn}/SQSDefaultPolicy"),
            "Statement": statements,
        })
        .to_string()
    }

    pub(crate) fn list_dead_letter_source_queues(
        &self,
        req: &SqsRequest,
        p: &Params,
    ) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let arn = self.arn(&q.name);
        let max = int_in(p, "MaxResults", 1, LIST_QUEUES_MAX)?;
        let after = match opt_str(p, "NextToken") {
            Some(t) if !t.is_empty() => Some(decode_token(t)?),
            _ => None,
        };
        let names: Vec<String> = self
            .queues_read()
            .values()
            .filter(|s| {
                s.attr("RedrivePolicy")
                    .and_then(|rp| parse_redrive(&rp))
                    .is_some_and(|rp| rp.target_arn == arn)
            })
            .map(|s| s.name.clone())
            .filter(|n| after.as_ref().is_none_or(|a| n.as_str() > a.as_str()))
            .collect();
        page(names, max, |n| self.queue_url(req, n), "queueUrls", true)
    }
}

/// Whether a RedriveAllowPolicy lets `source_arn` use the queue as its
/// dead-letter queue.
pub(crate) fn redrive_allowed(policy: &str, source_arn: &str) -> bool {
    let Ok(j) = serde_json::from_str::<Value>(policy) else {
        return true;
    };
    match j.get("redrivePermission").and_then(Value::as_str) {
        Some("denyAll") => false,
        Some("byQueue") => j
            .get("sourceQueueArns")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(source_arn))),
        _ => true,
    }
}

fn decode_token(t: &str) -> SqsResult<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| invalid_value("NextToken", t, "Invalid token"))
}

/// One page of queue URLs: all of them without MaxResults (up to 1000),
/// else MaxResults and a NextToken when more remain.
fn page(
    names: Vec<String>,
    max: Option<i64>,
    url: impl Fn(&str) -> String,
    key: &str,
    always: bool,
) -> SqsResult<Value> {
    let limit = usize::try_from(max.unwrap_or(LIST_QUEUES_MAX)).unwrap_or(1000);
    let more = max.is_some() && names.len() > limit;
    let shown: Vec<&String> = names.iter().take(limit).collect();
    let mut out = Map::new();
    if !shown.is_empty() || always {
        out.insert(
            key.into(),
            Value::Array(shown.iter().map(|n| Value::String(url(n))).collect()),
        );
    }
    if more && let Some(last) = shown.last() {
        out.insert(
            "NextToken".into(),
            Value::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.as_bytes())),
        );
    }
    Ok(Value::Object(out))
}

/// Whether `name` is a queue attribute (ReceiveMessage's AttributeNames is
/// typed as queue attribute names in the model, so SDKs may send them).
pub(crate) fn is_queue_attribute(name: &str) -> bool {
    READ_ONLY.contains(&name) || SETTABLE.contains(&name)
}
