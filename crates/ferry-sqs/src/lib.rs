//! Ferry's Amazon SQS front end: the SQS HTTP API (AWS JSON 1.0 and the
//! query protocol, on one port) over the messaging engine of `ferry-core`.
//!
//! An SQS queue is an engine queue of the same name in one vhost (`/` by
//! default), so AMQP clients can publish to it through the default exchange
//! and consume from it, and SQS clients read what they publish
//! (`message.rs` has the mapping). What SQS has and the engine does not —
//! queue attributes, tags, permissions, FIFO deduplication, redrive
//! policies and move tasks — lives here, persisted under `<data dir>/sqs/`
//! (`store.rs`).
//!
//! Where things are: `http` (protocol detection, parameters, responses),
//! `xml` (query-protocol responses), `errors` (SQS error codes), `params`
//! (parameter reading, batch rules), `message` (message attributes, MD5s,
//! the engine mapping), `queues` (queue actions), `messages` (send,
//! receive, delete, visibility), `redrive` (dead-letter moves and move
//! tasks), `store` (persistence).
//!
//! This crate never reaches into `ferry-log` and holds no message beyond
//! the request it is answering.

mod errors;
#[doc(hidden)]
pub mod fuzz;
mod http;
mod message;
mod messages;
mod params;
mod queues;
mod redrive;
mod store;
mod xml;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferry_core::alarm::ResourceAlarms;
use ferry_core::messaging::{Messaging, MessagingError, Queue};
use ferry_core::metrics::Metrics;
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, watch};

use crate::errors::{Code, SqsError, SqsResult, err, no_queue};
use crate::http::{Reply, SqsRequest};
use crate::store::{DedupEntry, QueueMeta, Store};

pub use crate::errors::Code as ErrorCode;

/// Entries in one batch request.
pub const BATCH_ENTRIES_MAX: usize = 10;
/// Messages in flight in a standard queue before ReceiveMessage answers
/// OverLimit.
pub const IN_FLIGHT_STANDARD_MAX: u64 = 120_000;
/// The same for FIFO queues.
pub const IN_FLIGHT_FIFO_MAX: u64 = 20_000;
/// The longest a send waits for a resource alarm to clear before it is
/// answered RequestThrottled (well inside SDKs' read timeouts: botocore's
/// is 60 s).
pub const SEND_ALARM_HOLD: Duration = Duration::from_secs(10);
/// The engine's connection id for SQS (AMQP's start at 1).
const CONNECTION: u64 = 0;

/// Settings of the SQS listener.
#[derive(Debug, Clone)]
pub struct SqsConfig {
    /// `host:port` put into queue URLs; `None`: the request's `Host`
    /// header (so a URL is reachable the way the client reached us), or the
    /// listener's address.
    pub advertised: Option<String>,
    pub region: String,
    pub account_id: String,
    /// The engine vhost holding SQS queues.
    pub vhost: String,
    /// Where `sqs/` goes (the broker's data directory).
    pub data_dir: PathBuf,
    /// Largest request body accepted (bigger: 413).
    pub request_bytes_max: usize,
    /// SQS refuses to re-create a deleted queue's name for this long.
    pub deleted_recently: Duration,
    /// And a second purge of a queue for this long.
    pub purge_interval: Duration,
    /// FIFO deduplication window.
    pub dedup_window: Duration,
    /// The broker's resource alarms (`Broker::alarms`): sends are held
    /// while one is on, and throttled if it outlasts `SEND_ALARM_HOLD`.
    pub alarms: watch::Receiver<ResourceAlarms>,
    /// The broker's traffic counters (`Broker::metrics`): requests and
    /// their latency, by action.
    pub metrics: Arc<Metrics>,
}

impl SqsConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> SqsConfig {
        SqsConfig {
            advertised: None,
            region: "us-east-1".to_string(),
            account_id: "000000000000".to_string(),
            vhost: ferry_core::messaging::DEFAULT_VHOST.to_string(),
            data_dir: data_dir.into(),
            // SendMessageBatch carries up to 1 MiB of messages; JSON escapes
            // and base64 binary attributes make the request larger.
            request_bytes_max: 4 * 1024 * 1024,
            deleted_recently: Duration::from_secs(60),
            purge_interval: Duration::from_secs(60),
            dedup_window: Duration::from_secs(300),
            // No alarm source: never raised.
            alarms: watch::channel(ResourceAlarms::default()).1,
            metrics: Arc::default(),
        }
    }
}

/// What happens in one queue that the engine does not keep.
#[derive(Debug, Default)]
pub(crate) struct Runtime {
    pub last_purge: Option<Instant>,
    /// Messages sent before this (ms) were purged: in-flight ones are
    /// dropped when they come back.
    pub purged_before_ms: i64,
    /// ApproximateFirstReceiveTimestamp by delivery id (not kept across
    /// restarts). FxHash: the ids are the log's offsets, not chosen by
    /// clients.
    pub first_receive: FxHashMap<u64, i64>,
    /// FIFO: in-flight delivery ids per message group.
    pub groups: HashMap<String, Vec<u64>>,
    /// FIFO deduplication: key → entry.
    pub dedup: HashMap<String, DedupEntry>,
    /// The keys of `dedup` in the order they were added, with their expiry
    /// (ms): expired entries are dropped from the front, so a send does not
    /// scan the whole window.
    pub dedup_expiry: VecDeque<(i64, String)>,
    pub last_sequence: u128,
    /// FIFO: recent receives by ReceiveRequestAttemptId, so that a retry
    /// gets the same messages (not kept across restarts).
    pub attempts: HashMap<String, Attempt>,
}

/// What one ReceiveMessage with a ReceiveRequestAttemptId returned.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub at: Instant,
    /// The deliveries returned (id, receive count): the retry is answered
    /// from `response` only while all of them are still in flight, as
    /// received.
    pub deliveries: Vec<(u64, u32)>,
    pub response: serde_json::Value,
}

/// Entries of `first_receive` kept at most (it is approximate anyway).
const FIRST_RECEIVE_ENTRIES_MAX: usize = 1_000_000;

#[derive(Debug)]
pub(crate) struct QueueState {
    pub name: String,
    pub incarnation: String,
    pub fifo: bool,
    pub meta: Mutex<QueueMeta>,
    pub runtime: Mutex<Runtime>,
    /// FIFO receives run one at a time per queue (group locks are decided
    /// before the engine is asked).
    pub fifo_receive: tokio::sync::Mutex<()>,
    /// FIFO: a group was released (delete, visibility change).
    pub released: Notify,
}

impl QueueState {
    pub fn meta(&self) -> MutexGuard<'_, QueueMeta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn runtime(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn attr(&self, name: &str) -> Option<String> {
        self.meta().attributes.get(name).cloned()
    }

    pub fn attr_i64(&self, name: &str, default: i64) -> i64 {
        self.meta()
            .attributes
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    pub fn record_first_receive(&self, id: u64, now_ms: i64) -> i64 {
        let mut rt = self.runtime();
        if rt.first_receive.len() >= FIRST_RECEIVE_ENTRIES_MAX {
            rt.first_receive.clear();
        }
        *rt.first_receive.entry(id).or_insert(now_ms)
    }

    pub fn forget_delivery(&self, id: u64) {
        let mut rt = self.runtime();
        rt.first_receive.remove(&id);
        if self.fifo {
            rt.groups.retain(|_, ids| {
                ids.retain(|i| *i != id);
                !ids.is_empty()
            });
            rt.attempts
                .retain(|_, a| !a.deliveries.iter().any(|(i, _)| *i == id));
        }
    }

    /// A delivery's visibility was changed: a receive attempt that returned
    /// it can no longer be retried (SQS's rule).
    pub fn forget_attempts_of(&self, id: u64) {
        if self.fifo {
            self.runtime()
                .attempts
                .retain(|_, a| !a.deliveries.iter().any(|(i, _)| *i == id));
        }
    }
}

/// The SQS front end's state: every SQS queue and what SQS keeps of it.
#[derive(Debug)]
pub struct Sqs {
    pub(crate) messaging: Arc<Messaging>,
    pub(crate) config: SqsConfig,
    pub(crate) queues: RwLock<BTreeMap<String, Arc<QueueState>>>,
    pub(crate) deleted: Mutex<HashMap<String, Instant>>,
    pub(crate) store: Arc<Store>,
    pub(crate) tasks: Mutex<Vec<Arc<redrive::MoveTask>>>,
    /// The listener's address, for queue URLs when nothing better is known.
    pub(crate) local: Mutex<Option<SocketAddr>>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why the front end could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the SQS state in {path}: {source}")]
    Store {
        path: String,
        source: std::io::Error,
    },
}

impl Sqs {
    /// Loads the SQS queues of the data directory and makes sure each has
    /// its engine queue. Needs a tokio runtime (the engine's timers).
    pub fn open(messaging: Arc<Messaging>, config: SqsConfig) -> Result<Arc<Sqs>, StartError> {
        let dir = config.data_dir.join("sqs");
        let (store, metas, dedup) =
            Store::open(&dir, now_ms()).map_err(|source| StartError::Store {
                path: dir.display().to_string(),
                source,
            })?;
        messaging.add_vhost(&config.vhost);
        let sqs = Arc::new(Sqs {
            messaging,
            config,
            queues: RwLock::new(BTreeMap::new()),
            deleted: Mutex::new(HashMap::new()),
            store: Arc::new(store),
            tasks: Mutex::new(Vec::new()),
            local: Mutex::new(None),
        });
        let mut by_incarnation: HashMap<String, Vec<DedupEntry>> = HashMap::new();
        for e in dedup {
            by_incarnation.entry(e.q.clone()).or_default().push(e);
        }
        {
            let mut queues = sqs.queues_mut();
            for meta in metas {
                // A queue whose log cannot be opened stays listed, and its
                // attributes stay in queues.json; every use of its
                // messages answers InternalError naming the cause.
                if let Err(e) = sqs.declare_engine_queue(&meta.name) {
                    tracing::error!(queue = %meta.name, error = %e.message, "cannot restore the engine queue of an SQS queue; its messages are unavailable until it can be opened");
                }
                let state = queues::new_state(meta);
                if state.fifo
                    && let Ok(engine) = sqs.engine_queue(&state.name)
                {
                    // Messages still in flight after a restart keep their
                    // groups locked until they are deleted or come back.
                    let mut rt = state.runtime();
                    for d in engine.in_flight_deliveries() {
                        let g = String::from_utf8_lossy(message::group_of(&d.message)).into_owned();
                        rt.groups.entry(g).or_default().push(d.id);
                    }
                }
                if let Some(entries) = by_incarnation.remove(&state.incarnation) {
                    let mut rt = state.runtime();
                    for e in entries {
                        if let Ok(seq) = e.seq.parse::<u128>() {
                            rt.last_sequence = rt.last_sequence.max(seq);
                        }
                        rt.dedup_expiry.push_back((e.exp, e.k.clone()));
                        rt.dedup.insert(e.k.clone(), e);
                    }
                }
                queues.insert(state.name.clone(), Arc::new(state));
            }
        }
        Ok(sqs)
    }

    pub(crate) fn queues_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<QueueState>>> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn queues_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<QueueState>>> {
        self.queues.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn declare_engine_queue(&self, name: &str) -> SqsResult<()> {
        let spec = ferry_core::messaging::QueueSpec {
            name: name.to_string(),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Vec::new(),
        };
        self.messaging
            .declare_queue(&self.config.vhost, spec, false, CONNECTION)
            .map(|_| ())
            .map_err(|e| match e {
                MessagingError::LimitReached(_) | MessagingError::Storage(_) => SqsError::from(e),
                e => err(
                    Code::QueueNameExists,
                    format!("A queue named {name} already exists with different settings: {e}"),
                ),
            })
    }

    pub(crate) fn engine_queue(&self, name: &str) -> SqsResult<Arc<Queue>> {
        self.messaging
            .queue(&self.config.vhost, name, CONNECTION)
            .map_err(|e| match e {
                // Held unavailable: its log could not be opened at start.
                MessagingError::Storage(_) => SqsError::from(e),
                _ => no_queue(),
            })
    }

    /// Persists every queue's metadata.
    pub(crate) fn save(&self) -> SqsResult<()> {
        let metas: Vec<QueueMeta> = self
            .queues_read()
            .values()
            .map(|q| q.meta().clone())
            .collect();
        self.store.save(metas).map_err(errors::internal)
    }

    pub(crate) fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:sqs:{}:{}:{name}",
            self.config.region, self.config.account_id
        )
    }

    /// The queue name an ARN of this region and account names.
    pub(crate) fn name_of_arn<'a>(&self, arn: &'a str) -> Option<&'a str> {
        let mut parts = arn.splitn(6, ':');
        let (Some("arn"), Some(_), Some("sqs"), Some(_region), Some(_account), Some(name)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        Some(name)
    }

    pub(crate) fn queue_url(&self, req: &SqsRequest, name: &str) -> String {
        let host = match (&self.config.advertised, &req.host) {
            (Some(a), _) => a.clone(),
            (None, Some(h)) => h.clone(),
            (None, None) => self
                .local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_or_else(|| "localhost:9324".to_string(), |a| a.to_string()),
        };
        format!("http://{host}/{}/{name}", self.config.account_id)
    }

    /// The queue a request is about: its `QueueUrl` (the last path segment
    /// of it), or else the request's own path.
    pub(crate) fn queue_of(
        &self,
        req: &SqsRequest,
        p: &params::Params,
    ) -> SqsResult<Arc<QueueState>> {
        let from_url = params::opt_str(p, "QueueUrl").map(|u| {
            let path = match u.split_once("://") {
                Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
                None => u,
            };
            path.split(['?', '#'])
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string()
        });
        let name = match from_url {
            Some(n) if !n.is_empty() => n,
            Some(_) => return Err(no_queue()),
            None => {
                let n = req
                    .path
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                if n.is_empty() {
                    return Err(errors::missing("QueueUrl"));
                }
                n
            }
        };
        self.queues_read().get(&name).cloned().ok_or_else(no_queue)
    }

    async fn dispatch(self: &Arc<Self>, req: &SqsRequest) -> SqsResult<Reply> {
        let p = &req.params;
        let value = match req.action.as_str() {
            "CreateQueue" => self.create_queue(req, p),
            "DeleteQueue" => self.delete_queue(req, p),
            "GetQueueUrl" => self.get_queue_url(req, p),
            "ListQueues" => self.list_queues(req, p),
            "GetQueueAttributes" => self.get_queue_attributes(req, p),
            "SetQueueAttributes" => self.set_queue_attributes(req, p),
            "PurgeQueue" => self.purge_queue(req, p),
            "TagQueue" => self.tag_queue(req, p),
            "UntagQueue" => self.untag_queue(req, p),
            "ListQueueTags" => self.list_queue_tags(req, p),
            "AddPermission" => self.add_permission(req, p),
            "RemovePermission" => self.remove_permission(req, p),
            "ListDeadLetterSourceQueues" => self.list_dead_letter_source_queues(req, p),
            // The message actions answer typed structs (`SqsRequest::reply`).
            "SendMessage" => return self.send_message(req, p).await,
            "SendMessageBatch" => return self.send_message_batch(req, p).await,
            "ReceiveMessage" => return self.receive_message(req, p).await,
            "DeleteMessage" => self.delete_message(req, p),
            "DeleteMessageBatch" => return self.delete_message_batch(req, p),
            "ChangeMessageVisibility" => self.change_message_visibility(req, p),
            "ChangeMessageVisibilityBatch" => {
                return self.change_message_visibility_batch(req, p);
            }
            "StartMessageMoveTask" => self.start_message_move_task(p),
            "ListMessageMoveTasks" => self.list_message_move_tasks(p),
            "CancelMessageMoveTask" => self.cancel_message_move_task(p),
            other => Err(err(
                Code::InvalidAction,
                format!("The action {other} is not valid for this endpoint."),
            )),
        };
        value.map(Reply::Value)
    }
}

/// A receipt handle: which delivery, which receive of it, and the queue
/// incarnation it belongs to (`v1:<incarnation>:<delivery>:<receive>`, in
/// URL-safe base64, opaque to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub id: u64,
    pub count: u32,
}

impl Receipt {
    pub fn encode(&self, incarnation: &str) -> String {
        let mut digits = itoa::Buffer::new();
        let mut text = String::with_capacity(incarnation.len() + 34);
        text.push_str("v1:");
        text.push_str(incarnation);
        text.push(':');
        text.push_str(digits.format(self.id));
        text.push(':');
        text.push_str(digits.format(self.count));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// The receipt of a handle given for `queue`; a handle of another
    /// queue, or of an earlier incarnation of this one, is invalid.
    pub fn decode(handle: &str, queue: &QueueState) -> SqsResult<Receipt> {
        let invalid = || {
            err(
                Code::ReceiptHandleIsInvalid,
                format!("The input receipt handle \"{handle}\" is not a valid receipt handle."),
            )
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(handle)
            .map_err(|_| invalid())?;
        let text = std::str::from_utf8(&raw).map_err(|_| invalid())?;
        let rest = text.strip_prefix("v1:").ok_or_else(invalid)?;
        let (rest, count) = rest.rsplit_once(':').ok_or_else(invalid)?;
        let (incarnation, id) = rest.rsplit_once(':').ok_or_else(invalid)?;
        if incarnation != queue.incarnation {
            return Err(invalid());
        }
        Ok(Receipt {
            id: id.parse().map_err(|_| invalid())?,
            count: count.parse().map_err(|_| invalid())?,
        })
    }
}

/// The SQS API as a router, for a listener bound to `local` (the address
/// put in queue URLs when neither an advertised address nor a `Host`
/// header says otherwise). The binary serves it with its connection limits
/// and timeouts.
pub fn router(sqs: Arc<Sqs>, local: SocketAddr) -> axum::Router {
    *sqs.local.lock().unwrap_or_else(|e| e.into_inner()) = Some(local);
    axum::Router::new().fallback(http::handle).with_state(sqs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn queue(incarnation: &str) -> QueueState {
        queues::new_state(store::QueueMeta {
            name: "q".into(),
            incarnation: incarnation.into(),
            fifo: false,
            created_s: 0,
            modified_s: 0,
            attributes: BTreeMap::new(),
            tags: BTreeMap::new(),
            permissions: BTreeMap::new(),
        })
    }

    #[test]
    fn receipt_handles_round_trip_and_name_their_queue() {
        let q = queue("3f0c9a52-1b7e-4c1d-9a57-0e1f2a3b4c5d");
        let r = Receipt {
            id: 12_345_678_901,
            count: 3,
        };
        let handle = r.encode(&q.incarnation);
        assert_eq!(Receipt::decode(&handle, &q).unwrap(), r);
        // The layout handles already given out have.
        let by_hand = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("v1:{}:12345678901:3", q.incarnation));
        assert_eq!(handle, by_hand);
        // Another incarnation of the queue (deleted and created again).
        let other = queue("00000000-1b7e-4c1d-9a57-0e1f2a3b4c5d");
        let refused = Receipt::decode(&handle, &other).unwrap_err();
        assert_eq!(refused.code, Code::ReceiptHandleIsInvalid);
        for bad in ["", "not base64!", "djE6", "djI6YTox", "v1:x:1:2"] {
            let e = Receipt::decode(bad, &q).unwrap_err();
            assert_eq!(e.code, Code::ReceiptHandleIsInvalid, "{bad}");
        }
        let text = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            format!("v1:{}:1", q.incarnation),
            format!("v1:{}:x:1", q.incarnation),
            format!("v1:{}:1:-1", q.incarnation),
            format!("v2:{}:1:1", q.incarnation),
        ] {
            let e = Receipt::decode(&text(&bad), &q).unwrap_err();
            assert_eq!(e.code, Code::ReceiptHandleIsInvalid, "{bad}");
        }
    }
}
