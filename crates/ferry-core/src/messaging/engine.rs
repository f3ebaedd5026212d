//! The topology behind [`super::Messaging`]: vhosts, their exchanges (with
//! bindings) and queues, the catalog events that make durable ones survive a
//! restart, routing, dead-lettering and the timer task.
//!
//! Lock order: the catalog mutex, then a vhost's topology lock, then a
//! queue's state lock. Nothing takes a topology lock while holding a queue's
//! lock: queues hand dead letters and auto-deletes back here after releasing
//! theirs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::Duration;

use ferry_log::{Clock, FsyncPolicy, Log, LogConfig};
use rustc_hash::{FxHashMap, FxHashSet};
use uuid::Uuid;

use super::args::{self, QueueArgs, exchange_equivalence, kind_name, parse_queue_args, rs};
use super::codec::{self, Meta};
use super::queue::{
    Appended, DeadLetter, Entry, QUEUE_MESSAGE_BYTES_MAX, QueueConfig, QueueInner, StreamInfo,
    original_expiration,
};
use super::routing::{Binding, Bindings, Dest, Routing};
use super::value::{as_int, as_str, from_stored, to_stored};
use super::{
    Arguments, ConnectionId, Death, DeathReason, DelayedRouting, ExchangeKind, ExchangeSpec,
    FieldValue, Message, MessagingError, PendingDurability, Published, Queue, QueueInfo, QueueSpec,
    QueueType, argument,
};
use crate::catalog::{BindingRecord, Catalog, CatalogEvent, MessagingRecords};
use crate::names::validate_topic_name;
use crate::{Broker, CoreError};

/// The default vhost.
pub const DEFAULT_VHOST: &str = "/";
/// Longest exchange or queue name (AMQP short string).
const NAME_BYTES_MAX: usize = 255;
/// Exchanges a publish may pass through (exchange-to-exchange bindings and
/// alternate exchanges): each is visited once anyway, this bounds the work.
const ROUTE_EXCHANGES_MAX: usize = 1024;
/// Delayed messages released per exchange per tick.
const DELAYED_RELEASE_PER_TICK_MAX: usize = 10_000;

/// Settings of the messaging engine.
#[derive(Debug, Clone)]
pub struct MessagingConfig {
    /// Fsync policy of durable queues (the broker's `fsync.policy`):
    /// `Always` makes publisher confirms of persistent messages wait for a
    /// group-commit fsync.
    pub fsync: FsyncPolicy,
    /// Segment size of queue logs: the unit in which drained queues give
    /// disk space back.
    pub queue_segment_bytes: u64,
    /// How often the timer expires messages, releases delayed ones, fsyncs
    /// journals and reclaims segments.
    pub timer_tick: Duration,
    /// Queues per vhost (RabbitMQ's vhost `max-queues`): each holds open
    /// files, so a client declaring queues without end would use up the
    /// broker's file descriptors.
    pub queues_per_vhost_max: usize,
    /// Exchanges per vhost, the predeclared `amq.*` ones included: each
    /// holds memory, and a delayed-message exchange a log.
    pub exchanges_per_vhost_max: usize,
    /// Bindings per vhost, of all exchanges together: each holds memory,
    /// and routing and binding walk them.
    pub bindings_per_vhost_max: usize,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            fsync: FsyncPolicy::Always,
            queue_segment_bytes: 8 * 1024 * 1024,
            timer_tick: Duration::from_millis(50),
            queues_per_vhost_max: 10_000,
            exchanges_per_vhost_max: 10_000,
            bindings_per_vhost_max: 100_000,
        }
    }
}

#[derive(Debug)]
pub(crate) struct ExchangeState {
    pub spec: ExchangeSpec,
    pub bindings: Bindings,
    pub alternate: Option<String>,
    /// Where a delayed-message exchange holds messages until they are due.
    pub store: Option<Arc<QueueInner>>,
}

/// A durable queue that could not be opened when the broker started (a
/// damaged segment of its log, a disk error). It keeps its name, catalog record and
/// directory, untouched, but nothing can use it until a restart opens it:
/// declaring, consuming from, binding or deleting it is refused with the
/// open error, and messages routed to it are not delivered to it.
#[derive(Debug)]
pub(crate) struct UnavailableQueue {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub(crate) struct Topology {
    pub exchanges: HashMap<String, ExchangeState>,
    pub queues: HashMap<String, Arc<Queue>>,
    pub unavailable: HashMap<String, UnavailableQueue>,
}

impl Topology {
    /// The error a use of queue `name`, which is not open, gets: the
    /// queue is unavailable, or there is none.
    fn missing_queue(&self, name: &str, vhost: &str) -> MessagingError {
        match self.unavailable.get(name) {
            Some(q) => MessagingError::Storage(format!(
                "{} is unavailable: it could not be opened when the broker started ({})",
                rs("queue", name, vhost),
                q.reason
            )),
            None => not_found("queue", name, vhost),
        }
    }

    /// Bindings of every exchange. Counted when a binding is added rather
    /// than kept as a total, which every path that drops bindings (unbind,
    /// queue and exchange deletion, auto-delete) would have to maintain.
    fn binding_count(&self) -> usize {
        self.exchanges
            .values()
            .map(|x| x.bindings.all().len())
            .sum()
    }
}

#[derive(Debug)]
pub(crate) struct Vhost {
    pub name: String,
    topo: RwLock<Topology>,
}

impl Vhost {
    fn read(&self) -> RwLockReadGuard<'_, Topology> {
        self.topo.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Topology> {
        self.topo.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub data_dir: PathBuf,
    pub config: MessagingConfig,
    catalog: Arc<Mutex<Catalog>>,
    vhosts: RwLock<BTreeMap<String, Arc<Vhost>>>,
    pub clock: Arc<dyn Clock>,
    timers_started: AtomicBool,
    me: Weak<Shared>,
    /// For stream queues, which are topics.
    broker: OnceLock<Weak<Broker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn storage(e: impl std::fmt::Display) -> MessagingError {
    MessagingError::Storage(e.to_string())
}

fn not_found(kind: &'static str, name: &str, vhost: &str) -> MessagingError {
    MessagingError::NotFound {
        kind,
        name: name.to_string(),
        vhost: vhost.to_string(),
    }
}

fn default_exchange_refused() -> MessagingError {
    MessagingError::AccessRefused("operation not permitted on the default exchange".to_string())
}

fn locked(name: &str, vhost: &str) -> MessagingError {
    MessagingError::ResourceLocked(format!(
        "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
        rs("queue", name, vhost)
    ))
}

pub(crate) fn kind_to_string(kind: ExchangeKind) -> String {
    match kind {
        ExchangeKind::Delayed(r) => format!(
            "x-delayed-message:{}",
            kind_name(match r {
                DelayedRouting::Direct => ExchangeKind::Direct,
                DelayedRouting::Fanout => ExchangeKind::Fanout,
                DelayedRouting::Topic => ExchangeKind::Topic,
                DelayedRouting::Headers => ExchangeKind::Headers,
            })
        ),
        k => kind_name(k).to_string(),
    }
}

pub(crate) fn kind_from_string(s: &str) -> Option<ExchangeKind> {
    Some(match s {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        "x-delayed-message:direct" => ExchangeKind::Delayed(DelayedRouting::Direct),
        "x-delayed-message:fanout" => ExchangeKind::Delayed(DelayedRouting::Fanout),
        "x-delayed-message:topic" => ExchangeKind::Delayed(DelayedRouting::Topic),
        "x-delayed-message:headers" => ExchangeKind::Delayed(DelayedRouting::Headers),
        _ => return None,
    })
}

/// `amq.gen-` and 22 characters of URL-safe base64 of 16 random bytes, as
/// RabbitMQ names server-named queues.
fn generated_name() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = Uuid::new_v4();
    let mut out = String::from("amq.gen-");
    for chunk in bytes.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out
}

fn check_name(kind: &str, name: &str) -> Result<(), MessagingError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(MessagingError::PreconditionFailed(format!(
            "{kind} name is longer than {NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

fn standard_exchanges() -> Vec<(&'static str, ExchangeKind)> {
    vec![
        ("", ExchangeKind::Direct),
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ]
}

fn new_exchange(spec: ExchangeSpec, store: Option<Arc<QueueInner>>) -> ExchangeState {
    let alternate = match argument(&spec.arguments, "alternate-exchange") {
        Some(FieldValue::Str(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    };
    ExchangeState {
        bindings: Bindings::new(Routing::of(spec.kind)),
        spec,
        alternate,
        store,
    }
}

fn lookup<'a>(table: &'a [(String, FieldValue)], name: &str) -> Option<&'a FieldValue> {
    table.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The extra routing keys of a message (`CC` and `BCC` headers).
fn extra_keys(headers: &[(String, FieldValue)], name: &str) -> Vec<String> {
    let to_string = |v: &FieldValue| as_str(v).map(|s| String::from_utf8_lossy(s).into_owned());
    match lookup(headers, name) {
        Some(FieldValue::Array(a)) => a.iter().filter_map(to_string).collect(),
        Some(v) => to_string(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// A queue, and for a delayed exchange's store, its vhost and exchange.
type QueueAndOwner = (Arc<QueueInner>, Option<(Arc<Vhost>, String)>);

/// Where a publish goes: the queues, and the delayed exchanges' stores with
/// the time each releases it.
type Destinations = (Vec<Arc<Queue>>, Vec<(Arc<QueueInner>, i64)>);

/// Where routing ended: the queues, and the delayed exchanges that took it.
#[derive(Default)]
struct Route {
    queues: Vec<Arc<Queue>>,
    delayed: Vec<(Arc<QueueInner>, i64)>,
}

/// What a route walk uses besides its answer, kept across the walks of a
/// batch of publishes so that routing each allocates nothing new. Queues and
/// exchanges are told apart by address, not by their client-chosen names,
/// so the sets can use a fast hasher; names are borrowed from the topology.
#[derive(Default)]
struct RouteScratch<'t> {
    seen_queues: FxHashSet<*const Queue>,
    visited: FxHashSet<*const ExchangeState>,
    stack: Vec<&'t str>,
    dests: Vec<&'t Dest>,
}

/// Adds the queue named `name`, if it exists and is not there yet.
fn take_queue(
    topo: &Topology,
    name: &str,
    seen: &mut FxHashSet<*const Queue>,
    queues: &mut Vec<Arc<Queue>>,
) {
    if let Some(q) = topo.queues.get(name)
        && seen.insert(Arc::as_ptr(q))
    {
        queues.push(Arc::clone(q));
    }
}

impl Shared {
    pub fn open(
        data_dir: PathBuf,
        config: MessagingConfig,
        catalog: Arc<Mutex<Catalog>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Shared>, MessagingError> {
        std::fs::create_dir_all(data_dir.join("queues")).map_err(storage)?;
        let shared = Arc::new_cyclic(|me| Shared {
            data_dir,
            config,
            catalog,
            vhosts: RwLock::new(BTreeMap::new()),
            clock,
            timers_started: AtomicBool::new(false),
            me: me.clone(),
            broker: OnceLock::new(),
        });
        shared.add_vhost(DEFAULT_VHOST);
        Ok(shared)
    }

    pub fn attach(
        &self,
        broker: Weak<Broker>,
        records: MessagingRecords,
    ) -> Result<(), MessagingError> {
        let _ = self.broker.set(broker);
        self.restore(records)?;
        self.sweep_orphans(&self.data_dir.join("queues"));
        Ok(())
    }

    fn restore(&self, records: MessagingRecords) -> Result<(), MessagingError> {
        for ((vhost, name), x) in records.exchanges {
            let Some(kind) = kind_from_string(&x.kind) else {
                tracing::warn!(
                    vhost,
                    exchange = name,
                    kind = x.kind,
                    "unknown exchange type in the catalog; skipped"
                );
                continue;
            };
            let v = self.add_vhost(&vhost);
            let spec = ExchangeSpec {
                name: name.clone(),
                kind,
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: from_stored(&x.arguments),
            };
            let store = match (&x.store, kind) {
                (Some(id), ExchangeKind::Delayed(_)) => {
                    Some(self.open_store(&vhost, &name, id, true)?)
                }
                _ => None,
            };
            v.write().exchanges.insert(name, new_exchange(spec, store));
        }
        for ((vhost, name), q) in records.queues {
            let v = self.add_vhost(&vhost);
            let arguments = from_stored(&q.arguments);
            let args = match parse_queue_args(&arguments, &name, &vhost) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(vhost, queue = name, error = %e, "queue arguments in the catalog no longer parse; using none");
                    QueueArgs::default()
                }
            };
            let cfg = self.queue_config(
                &vhost,
                &name,
                &q.id,
                true,
                true,
                q.auto_delete,
                None,
                arguments,
                args,
            );
            let opened = if cfg.args.queue_type() == QueueType::Stream {
                let owned = Some(q.topic.is_some());
                self.stream_log(&vhost, &name, &q.id, &cfg.args, true, owned)
                    .map(|(log, info)| {
                        QueueInner::open_stream(cfg, log, info, self.me.clone(), self.clock.clone())
                    })
            } else {
                QueueInner::open(cfg, self.me.clone(), self.clock.clone())
            };
            match opened {
                Ok(inner) => {
                    v.write().queues.insert(name, Arc::new(Queue { inner }));
                }
                // One queue that cannot be opened must not stop the
                // broker's start, nor be replaced by an empty queue of the
                // same name: it is held unavailable, its files kept.
                Err(e) => {
                    tracing::error!(
                        vhost,
                        queue = name,
                        dir = %self.data_dir.join("queues").join(&q.id).display(),
                        error = %e,
                        "queue held unavailable: it cannot be opened, so every use of it is \
                         refused and its files are left as they are. To bring it back: stop the \
                         broker, fix what the error names (for a damaged segment: keep a copy of \
                         it, then cut it at the byte position named, `truncate -s POSITION FILE`, \
                         losing its messages from there on), and start the broker again"
                    );
                    v.write().unavailable.insert(
                        name,
                        UnavailableQueue {
                            id: q.id.clone(),
                            reason: e.to_string(),
                        },
                    );
                }
            }
        }
        for b in records.bindings {
            let v = self.add_vhost(&b.vhost);
            let mut topo = v.write();
            let dest = if b.to_queue {
                Dest::Queue(b.destination.clone())
            } else {
                Dest::Exchange(b.destination.clone())
            };
            if let Some(x) = topo.exchanges.get_mut(&b.source) {
                x.bindings.add(Binding {
                    dest,
                    key: b.key.clone(),
                    args: from_stored(&b.arguments),
                });
            }
        }
        Ok(())
    }

    /// Queue directories no durable queue or exchange owns: transient queues
    /// of the previous run, or leftovers of a crash mid-declare.
    fn sweep_orphans(&self, queues_dir: &std::path::Path) {
        let mut known = HashSet::new();
        for v in read(&self.vhosts).values() {
            let topo = v.read();
            known.extend(topo.queues.values().map(|q| q.inner.cfg.id.clone()));
            known.extend(topo.unavailable.values().map(|q| q.id.clone()));
            known.extend(
                topo.exchanges
                    .values()
                    .filter_map(|x| x.store.as_ref().map(|s| s.cfg.id.clone())),
            );
        }
        let Ok(entries) = std::fs::read_dir(queues_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                self.trash(entry.path(), &name);
            }
        }
    }

    /// Moves a queue directory out of the way and removes it in the
    /// background (readers may still hold its files).
    fn trash(&self, dir: PathBuf, id: &str) {
        let trash = self.data_dir.join("trash");
        let target = trash.join(format!("queue-{id}.{}", Uuid::new_v4().simple()));
        let moved = std::fs::create_dir_all(&trash).and_then(|()| std::fs::rename(&dir, &target));
        let doomed = match moved {
            Ok(()) => target,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not move a queue directory to the trash; removing it in place");
                dir
            }
        };
        std::thread::spawn(move || {
            if let Err(e) = std::fs::remove_dir_all(&doomed)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %doomed.display(), error = %e, "could not remove a deleted queue's files");
            }
        });
    }

    pub fn add_vhost(&self, name: &str) -> Arc<Vhost> {
        if let Some(v) = read(&self.vhosts).get(name) {
            return v.clone();
        }
        let mut vhosts = write(&self.vhosts);
        vhosts
            .entry(name.to_string())
            .or_insert_with(|| {
                let mut topo = Topology::default();
                for (x, kind) in standard_exchanges() {
                    let spec = ExchangeSpec {
                        name: x.to_string(),
                        kind,
                        durable: true,
                        auto_delete: false,
                        internal: false,
                        arguments: Vec::new(),
                    };
                    topo.exchanges
                        .insert(x.to_string(), new_exchange(spec, None));
                }
                Arc::new(Vhost {
                    name: name.to_string(),
                    topo: RwLock::new(topo),
                })
            })
            .clone()
    }

    pub fn vhost(&self, name: &str) -> Result<Arc<Vhost>, MessagingError> {
        read(&self.vhosts)
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("vhost", name, name))
    }

    pub fn vhost_exists(&self, name: &str) -> bool {
        read(&self.vhosts).contains_key(name)
    }

    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        lock(&self.catalog)
    }

    fn journal(catalog: &mut Catalog, event: CatalogEvent) -> Result<(), MessagingError> {
        catalog.append(&event).map_err(storage)
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_config(
        &self,
        vhost: &str,
        name: &str,
        id: &str,
        durable: bool,
        persist: bool,
        auto_delete: bool,
        exclusive_owner: Option<ConnectionId>,
        arguments: Arguments,
        args: QueueArgs,
    ) -> QueueConfig {
        QueueConfig {
            name: name.to_string(),
            vhost: vhost.to_string(),
            id: id.to_string(),
            dir: self.data_dir.join("queues").join(id),
            durable,
            persist,
            auto_delete,
            exclusive_owner,
            arguments,
            args,
            internal: false,
            fsync: self.config.fsync,
            segment_bytes: self.config.queue_segment_bytes,
        }
    }

    fn open_store(
        &self,
        vhost: &str,
        exchange: &str,
        id: &str,
        durable: bool,
    ) -> Result<Arc<QueueInner>, MessagingError> {
        let mut cfg = self.queue_config(
            vhost,
            &format!("delayed store of exchange '{exchange}'"),
            id,
            durable,
            durable,
            false,
            None,
            Vec::new(),
            QueueArgs::default(),
        );
        cfg.internal = true;
        QueueInner::open(cfg, self.me.clone(), self.clock.clone())
    }

    // ---- exchanges ----

    pub fn declare_exchange(
        &self,
        vhost: &str,
        spec: ExchangeSpec,
        passive: bool,
    ) -> Result<(), MessagingError> {
        let v = self.vhost(vhost)?;
        if spec.name.is_empty() {
            return Err(default_exchange_refused());
        }
        check_name("exchange", &spec.name)?;
        let mut catalog = self.catalog();
        let mut topo = v.write();
        if let Some(x) = topo.exchanges.get(&spec.name) {
            if passive {
                return Ok(());
            }
            return exchange_equivalence(&x.spec, &spec, vhost);
        }
        if passive {
            return Err(not_found("exchange", &spec.name, vhost));
        }
        if spec.name.starts_with("amq.") {
            return Err(MessagingError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        let max = self.config.exchanges_per_vhost_max;
        if topo.exchanges.len() >= max {
            // In the words of RabbitMQ's queue limit (it has none for exchanges).
            return Err(MessagingError::LimitReached(format!(
                "cannot declare exchange '{}': exchange limit in vhost '{vhost}' ({max}) is reached",
                spec.name
            )));
        }
        let store = match spec.kind {
            ExchangeKind::Delayed(_) => {
                let id = Uuid::new_v4().simple().to_string();
                Some((
                    id.clone(),
                    self.open_store(vhost, &spec.name, &id, spec.durable)?,
                ))
            }
            _ => None,
        };
        if spec.durable {
            let event = CatalogEvent::ExchangeDeclared {
                vhost: vhost.to_string(),
                name: spec.name.clone(),
                kind: kind_to_string(spec.kind),
                auto_delete: spec.auto_delete,
                internal: spec.internal,
                arguments: to_stored(&spec.arguments),
                store: store.as_ref().map(|(id, _)| id.clone()),
            };
            if let Err(e) = Self::journal(&mut catalog, event) {
                if let Some((_, s)) = store {
                    self.trash(s.cfg.dir.clone(), &s.cfg.id);
                }
                return Err(e);
            }
        }
        let name = spec.name.clone();
        topo.exchanges
            .insert(name, new_exchange(spec, store.map(|(_, s)| s)));
        Ok(())
    }

    pub fn delete_exchange(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
    ) -> Result<(), MessagingError> {
        let v = self.vhost(vhost)?;
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(MessagingError::AccessRefused(format!(
                "deletion of system {} not allowed",
                rs("exchange", name, vhost)
            )));
        }
        let mut catalog = self.catalog();
        let mut topo = v.write();
        let Some(x) = topo.exchanges.get(name) else {
            // RabbitMQ answers delete-ok for an exchange that is not there.
            return Ok(());
        };
        if if_unused && !x.bindings.is_empty() {
            return Err(MessagingError::PreconditionFailed(format!(
                "{} in use",
                rs("exchange", name, vhost)
            )));
        }
        self.remove_exchange(&mut catalog, &mut topo, vhost, name)
    }

    /// Removes an exchange, its bindings, the bindings to it (cascading to
    /// auto-delete sources) and its delayed store.
    fn remove_exchange(
        &self,
        catalog: &mut Catalog,
        topo: &mut Topology,
        vhost: &str,
        name: &str,
    ) -> Result<(), MessagingError> {
        let Some(x) = topo.exchanges.get(name) else {
            return Ok(());
        };
        if x.spec.durable {
            Self::journal(
                catalog,
                CatalogEvent::ExchangeDeleted {
                    vhost: vhost.to_string(),
                    name: name.to_string(),
                },
            )?;
        }
        let Some(x) = topo.exchanges.remove(name) else {
            return Ok(());
        };
        if let Some(store) = x.store {
            store.close_for_delete();
            self.trash(store.cfg.dir.clone(), &store.cfg.id);
        }
        self.remove_bindings_to(catalog, topo, vhost, &Dest::Exchange(name.to_string()))
    }

    /// Removes every binding to `dest` (the catalog drops them with the
    /// destination's own deletion event); auto-delete sources left without
    /// bindings go too.
    fn remove_bindings_to(
        &self,
        catalog: &mut Catalog,
        topo: &mut Topology,
        vhost: &str,
        dest: &Dest,
    ) -> Result<(), MessagingError> {
        let mut emptied = Vec::new();
        for (src, x) in topo.exchanges.iter_mut() {
            if x.bindings.remove_dest(dest) > 0 && x.bindings.is_empty() && x.spec.auto_delete {
                emptied.push(src.clone());
            }
        }
        for src in emptied {
            self.remove_exchange(catalog, topo, vhost, &src)?;
        }
        Ok(())
    }

    // ---- queues ----

    pub fn declare_queue(
        &self,
        vhost: &str,
        spec: QueueSpec,
        passive: bool,
        connection: ConnectionId,
    ) -> Result<QueueInfo, MessagingError> {
        let v = self.vhost(vhost)?;
        check_name("queue", &spec.name)?;
        // A new stream queue's topic is made before taking the catalog lock,
        // which creating a topic takes too.
        let mut prepared = None;
        if !passive
            && !spec.name.is_empty()
            && !spec.name.starts_with("amq.")
            && spec.durable
            && spec.exclusive_owner.is_none()
            && !spec.auto_delete
            && !v.read().queues.contains_key(&spec.name)
            && let Ok(args) = parse_queue_args(&spec.arguments, &spec.name, vhost)
            && args.queue_type() == QueueType::Stream
        {
            let id = Uuid::new_v4().simple().to_string();
            let log = self.stream_log(vhost, &spec.name, &id, &args, true, None)?;
            prepared = Some((id, log));
        }
        let mut catalog = self.catalog();
        let mut topo = v.write();
        // A new queue in its place would take over its catalog record, and
        // the next start would throw its files away.
        if topo.unavailable.contains_key(&spec.name) {
            return Err(topo.missing_queue(&spec.name, vhost));
        }
        if let Some(q) = topo.queues.get(&spec.name) {
            let cfg = &q.inner.cfg;
            if cfg.exclusive_owner.is_some_and(|o| o != connection) {
                return Err(locked(&spec.name, vhost));
            }
            if passive {
                q.inner.touch();
                return Ok(q.inner.info());
            }
            let resource = rs("queue", &spec.name, vhost);
            args::field_equivalence(
                "durable",
                &resource,
                &cfg.durable.to_string(),
                &spec.durable.to_string(),
            )?;
            args::field_equivalence(
                "auto_delete",
                &resource,
                &cfg.auto_delete.to_string(),
                &spec.auto_delete.to_string(),
            )?;
            if cfg.exclusive_owner != spec.exclusive_owner {
                return Err(locked(&spec.name, vhost));
            }
            args::queue_args_equivalence(&cfg.arguments, &spec.arguments, &resource)?;
            q.inner.touch();
            return Ok(q.inner.info());
        }
        if passive {
            return Err(not_found("queue", &spec.name, vhost));
        }
        let name = if spec.name.is_empty() {
            generated_name()
        } else {
            if spec.name.starts_with("amq.") {
                return Err(MessagingError::AccessRefused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    spec.name
                )));
            }
            spec.name.clone()
        };
        let max = self.config.queues_per_vhost_max;
        if topo.queues.len() >= max {
            // RabbitMQ's text for its vhost limit.
            return Err(MessagingError::LimitReached(format!(
                "cannot declare queue '{name}': queue limit in vhost '{vhost}' ({max}) is reached"
            )));
        }
        let args = parse_queue_args(&spec.arguments, &name, vhost)?;
        let resource = rs("queue", &name, vhost);
        if matches!(args.queue_type(), QueueType::Quorum | QueueType::Stream) {
            let bad = if !spec.durable {
                Some("non-durable")
            } else if spec.exclusive_owner.is_some() {
                Some("exclusive-owner")
            } else if spec.auto_delete {
                Some("auto-delete")
            } else {
                None
            };
            if let Some(p) = bad {
                return Err(MessagingError::PreconditionFailed(format!(
                    "invalid property '{p}' for {resource}"
                )));
            }
        }
        let journaled = spec.durable && spec.exclusive_owner.is_none();
        let stream = args.queue_type() == QueueType::Stream;
        let (id, prepared) = match prepared {
            Some((id, log)) => (id, Some(log)),
            None => (Uuid::new_v4().simple().to_string(), None),
        };
        let cfg = self.queue_config(
            vhost,
            &name,
            &id,
            spec.durable,
            journaled,
            spec.auto_delete,
            spec.exclusive_owner,
            spec.arguments.clone(),
            args,
        );
        // The queue's directory first, the journal second: a crash in
        // between leaves a directory that the next start sweeps away.
        let inner = if stream {
            let (log, info) = match prepared {
                Some(p) => p,
                // A server-named stream: no topic (its name is random).
                None => self.stream_log(vhost, &name, &id, &cfg.args, false, None)?,
            };
            QueueInner::open_stream(cfg, log, info, self.me.clone(), self.clock.clone())
        } else {
            QueueInner::open(cfg, self.me.clone(), self.clock.clone())?
        };
        if journaled {
            let event = CatalogEvent::QueueDeclared {
                vhost: vhost.to_string(),
                name: name.clone(),
                id: id.clone(),
                auto_delete: spec.auto_delete,
                arguments: to_stored(&spec.arguments),
                topic: inner.owned_topic(),
            };
            if let Err(e) = Self::journal(&mut catalog, event) {
                self.trash(inner.cfg.dir.clone(), &id);
                return Err(e);
            }
        }
        let queue = Arc::new(Queue { inner });
        let info = queue.inner.info();
        topo.queues.insert(name.clone(), queue);
        drop(topo);
        drop(catalog);
        self.ensure_timers();
        Ok(info)
    }

    /// The log of a stream queue: partition 0 of the topic of the same name
    /// (created with one partition and no time retention if there is none)
    /// when the queue is in the default vhost, has a valid topic name and
    /// `topic_allowed`; otherwise a log of its own under `queues/<id>/log`.
    /// `owned` (on restore) says whether the stream created its topic.
    fn stream_log(
        &self,
        vhost: &str,
        name: &str,
        id: &str,
        args: &QueueArgs,
        topic_allowed: bool,
        owned: Option<bool>,
    ) -> Result<(Arc<Log>, StreamInfo), MessagingError> {
        if topic_allowed
            && vhost == DEFAULT_VHOST
            && validate_topic_name(name).is_ok()
            && let Some(broker) = self.broker.get().and_then(Weak::upgrade)
        {
            let found = match broker.topic(name) {
                Some(t) => Ok((t, false)),
                None => {
                    let mut configs = BTreeMap::new();
                    configs.insert("retention.ms".to_string(), "-1".to_string());
                    if let Some(b) = args.max_length_bytes {
                        configs.insert("retention.bytes".to_string(), b.to_string());
                    }
                    match broker.create_topic(name, Some(1), &configs, false) {
                        Ok(t) => Ok((t, true)),
                        Err(CoreError::TopicExists(_)) => broker
                            .topic(name)
                            .map(|t| (t, false))
                            .ok_or(CoreError::UnknownTopic(name.to_string())),
                        Err(e) => Err(e),
                    }
                }
            };
            match found {
                Ok((topic, created)) => {
                    if topic.partition_count() > 1 {
                        tracing::warn!(
                            topic = name,
                            "stream queue reads only partition 0 of its topic"
                        );
                    }
                    // An offline partition is an error, not a reason to
                    // give the queue a log of its own beside the topic's.
                    let log = topic.partition(0).map_err(storage)?;
                    let info = StreamInfo {
                        topic: Some(name.to_string()),
                        owns_topic: owned.unwrap_or(created),
                    };
                    return Ok((log, info));
                }
                Err(e) => {
                    tracing::warn!(queue = name, error = %e, "stream queue cannot use a topic; it gets a log of its own");
                }
            }
        }
        let config = LogConfig {
            retention_ms: None,
            retention_bytes: args.max_length_bytes,
            max_batch_bytes: QUEUE_MESSAGE_BYTES_MAX,
            fsync: self.config.fsync,
            ..LogConfig::default()
        };
        let dir = self.data_dir.join("queues").join(id).join("log");
        let log = Log::open(&dir, config, self.clock.clone()).map_err(storage)?;
        Ok((
            Arc::new(log),
            StreamInfo {
                topic: None,
                owns_topic: false,
            },
        ))
    }

    pub fn queue(
        &self,
        vhost: &str,
        name: &str,
        connection: ConnectionId,
    ) -> Result<Arc<Queue>, MessagingError> {
        let v = self.vhost(vhost)?;
        let topo = v.read();
        let q = topo
            .queues
            .get(name)
            .ok_or_else(|| topo.missing_queue(name, vhost))?;
        if q.inner.cfg.exclusive_owner.is_some_and(|o| o != connection) {
            return Err(locked(name, vhost));
        }
        Ok(q.clone())
    }

    pub fn delete_queue(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> Result<u64, MessagingError> {
        let v = self.vhost(vhost)?;
        let mut catalog = self.catalog();
        let mut topo = v.write();
        if topo.unavailable.contains_key(name) {
            return Err(topo.missing_queue(name, vhost));
        }
        let Some(q) = topo.queues.get(name) else {
            // RabbitMQ answers delete-ok (0 messages) for a queue that is not there.
            return Ok(0);
        };
        if q.inner.cfg.exclusive_owner.is_some_and(|o| o != connection) {
            return Err(locked(name, vhost));
        }
        if if_unused && q.inner.consumer_count() > 0 {
            return Err(MessagingError::PreconditionFailed(format!(
                "{} in use",
                rs("queue", name, vhost)
            )));
        }
        if if_empty && q.inner.info().message_count > 0 {
            return Err(MessagingError::PreconditionFailed(format!(
                "{} not empty",
                rs("queue", name, vhost)
            )));
        }
        let topic = q.inner.owned_topic();
        let held = self.remove_queue(&mut catalog, &mut topo, vhost, name)?;
        drop(topo);
        drop(catalog);
        if let Some(topic) = topic
            && let Some(broker) = self.broker.get().and_then(Weak::upgrade)
            && let Err(e) = broker.delete_topic(&topic)
        {
            tracing::warn!(topic, error = %e, "could not delete a deleted stream queue's topic");
        }
        Ok(held)
    }

    fn remove_queue(
        &self,
        catalog: &mut Catalog,
        topo: &mut Topology,
        vhost: &str,
        name: &str,
    ) -> Result<u64, MessagingError> {
        let Some(q) = topo.queues.get(name) else {
            return Ok(0);
        };
        let journaled = q.inner.journaled();
        if journaled {
            Self::journal(
                catalog,
                CatalogEvent::QueueDeleted {
                    vhost: vhost.to_string(),
                    name: name.to_string(),
                },
            )?;
        }
        let Some(q) = topo.queues.remove(name) else {
            return Ok(0);
        };
        let held = q.inner.close_for_delete();
        self.trash(q.inner.cfg.dir.clone(), &q.inner.cfg.id);
        self.remove_bindings_to(catalog, topo, vhost, &Dest::Queue(name.to_string()))?;
        tracing::debug!(vhost, queue = name, "deleted queue");
        Ok(held)
    }

    /// Deletes a queue if it is still the instance `id` (auto-delete,
    /// `x-expires`): the name may have been reused meanwhile.
    pub fn delete_queue_instance(&self, vhost: &str, name: &str, id: &str) {
        let Ok(v) = self.vhost(vhost) else {
            return;
        };
        let mut catalog = self.catalog();
        let mut topo = v.write();
        if topo.queues.get(name).is_some_and(|q| q.inner.cfg.id == id)
            && let Err(e) = self.remove_queue(&mut catalog, &mut topo, vhost, name)
        {
            tracing::warn!(vhost, queue = name, error = %e, "could not delete queue");
        }
    }

    pub fn connection_closed(&self, connection: ConnectionId) {
        let vhosts: Vec<Arc<Vhost>> = read(&self.vhosts).values().cloned().collect();
        for v in vhosts {
            let mut catalog = self.catalog();
            let mut topo = v.write();
            let owned: Vec<String> = topo
                .queues
                .iter()
                .filter(|(_, q)| q.inner.cfg.exclusive_owner == Some(connection))
                .map(|(n, _)| n.clone())
                .collect();
            for name in owned {
                if let Err(e) = self.remove_queue(&mut catalog, &mut topo, &v.name, &name) {
                    tracing::warn!(vhost = %v.name, queue = name, error = %e, "could not delete an exclusive queue");
                }
            }
        }
    }

    // ---- bindings ----

    fn binding_record(vhost: &str, source: &str, b: &Binding) -> BindingRecord {
        let (destination, to_queue) = match &b.dest {
            Dest::Queue(q) => (q.clone(), true),
            Dest::Exchange(x) => (x.clone(), false),
        };
        BindingRecord {
            vhost: vhost.to_string(),
            source: source.to_string(),
            destination,
            to_queue,
            key: b.key.clone(),
            arguments: to_stored(&b.args),
        }
    }

    /// Adds (`add`) or removes a binding from `source` to `binding.dest`.
    pub fn change_binding(
        &self,
        vhost: &str,
        source: &str,
        binding: Binding,
        add: bool,
        connection: Option<ConnectionId>,
    ) -> Result<(), MessagingError> {
        let v = self.vhost(vhost)?;
        if source.is_empty() {
            return Err(default_exchange_refused());
        }
        if matches!(&binding.dest, Dest::Exchange(d) if d.is_empty()) {
            return Err(default_exchange_refused());
        }
        let mut catalog = self.catalog();
        let mut topo = v.write();
        let Some(src) = topo.exchanges.get(source) else {
            return Err(not_found("exchange", source, vhost));
        };
        let src_durable = src.spec.durable;
        let dest_durable = match &binding.dest {
            Dest::Queue(q) => {
                let Some(queue) = topo.queues.get(q) else {
                    return Err(topo.missing_queue(q, vhost));
                };
                if let Some(c) = connection
                    && queue.inner.cfg.exclusive_owner.is_some_and(|o| o != c)
                {
                    return Err(locked(q, vhost));
                }
                queue.inner.journaled()
            }
            Dest::Exchange(x) => match topo.exchanges.get(x) {
                Some(d) => d.spec.durable,
                None => return Err(not_found("exchange", x, vhost)),
            },
        };
        let record =
            (src_durable && dest_durable).then(|| Self::binding_record(vhost, source, &binding));
        let bindings_now = if add { topo.binding_count() } else { 0 };
        let Some(src) = topo.exchanges.get_mut(source) else {
            return Err(not_found("exchange", source, vhost));
        };
        if add {
            if src.bindings.contains(&binding) {
                return Ok(());
            }
            let max = self.config.bindings_per_vhost_max;
            if bindings_now >= max {
                return Err(MessagingError::LimitReached(format!(
                    "cannot bind exchange '{source}': binding limit in vhost '{vhost}' ({max}) is reached"
                )));
            }
            if let Some(r) = record {
                Self::journal(&mut catalog, CatalogEvent::BindingAdded(r))?;
            }
            src.bindings.add(binding);
        } else {
            if !src.bindings.contains(&binding) {
                // RabbitMQ answers unbind-ok for a binding that is not there.
                return Ok(());
            }
            if let Some(r) = record {
                Self::journal(&mut catalog, CatalogEvent::BindingRemoved(r))?;
            }
            src.bindings.remove(&binding);
            if src.bindings.is_empty() && src.spec.auto_delete {
                self.remove_exchange(&mut catalog, &mut topo, vhost, source)?;
            }
        }
        Ok(())
    }

    // ---- routing and publishing ----

    /// Routes from exchange `start`: every exchange at most once, alternate
    /// exchanges for exchanges that match nothing, delayed exchanges keep
    /// messages with a positive `x-delay` (except `undelayed`, whose delay
    /// has passed).
    fn route<'t>(
        topo: &'t Topology,
        start: &str,
        keys: &[String],
        headers: &[(String, FieldValue)],
        undelayed: Option<&str>,
        now: i64,
        scratch: &mut RouteScratch<'t>,
    ) -> Route {
        let mut route = Route::default();
        let RouteScratch {
            seen_queues,
            visited,
            stack,
            dests,
        } = scratch;
        seen_queues.clear();
        visited.clear();
        stack.clear();
        let Some((start, _)) = topo.exchanges.get_key_value(start) else {
            return route;
        };
        stack.push(start);
        while let Some(name) = stack.pop() {
            let Some(x) = topo.exchanges.get(name) else {
                continue;
            };
            if visited.len() >= ROUTE_EXCHANGES_MAX || !visited.insert(std::ptr::from_ref(x)) {
                continue;
            }
            if let (ExchangeKind::Delayed(_), Some(store)) = (x.spec.kind, &x.store)
                && undelayed != Some(name)
                && let Some(delay) = lookup(headers, "x-delay").and_then(as_int)
                && delay > 0
            {
                route
                    .delayed
                    .push((store.clone(), now.saturating_add(delay)));
                continue;
            }
            dests.clear();
            if name.is_empty() {
                for k in keys {
                    take_queue(topo, k, seen_queues, &mut route.queues);
                }
                continue;
            }
            for k in keys {
                x.bindings.route(k, headers, dests);
            }
            let matched = !dests.is_empty();
            for d in dests.drain(..) {
                match d {
                    Dest::Queue(q) => take_queue(topo, q, seen_queues, &mut route.queues),
                    Dest::Exchange(e) => stack.push(e),
                }
            }
            if !matched && let Some(ae) = &x.alternate {
                stack.push(ae);
            }
        }
        route
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Routes and appends messages in order (the publishes of one socket
    /// read): each queue gets one write for all the messages it takes, not
    /// one per message. Per message: how many queues took it and what to
    /// await for its publisher confirm, or why it was refused.
    pub fn publish_all(
        &self,
        vhost: &str,
        mut messages: Vec<Message>,
    ) -> Vec<Result<Published, MessagingError>> {
        let v = match self.vhost(vhost) {
            Ok(v) => v,
            Err(e) => return messages.iter().map(|_| Err(e.clone())).collect(),
        };
        let now = self.now_ms();
        let routes: Vec<Result<Destinations, MessagingError>> = {
            let topo = v.read();
            let mut scratch = RouteScratch::default();
            messages
                .iter_mut()
                .map(|m| Self::route_publish(&topo, vhost, m, now, &mut scratch))
                .collect()
        };
        self.ensure_timers();
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut to_queues = Vec::with_capacity(messages.len());
        for (message, route) in messages.iter().zip(routes) {
            let (queues, outcome) = match route {
                Ok((queues, delayed)) => match self.hold_delayed(delayed, message, now) {
                    Ok(p) => (queues, Ok(p)),
                    Err(e) => (Vec::new(), Err(e)),
                },
                Err(e) => (Vec::new(), Err(e)),
            };
            outcomes.push(outcome);
            to_queues.push(queues);
        }
        let routed: Vec<(&Message, Vec<Arc<Queue>>)> = messages.iter().zip(to_queues).collect();
        for (outcome, delivered) in outcomes.iter_mut().zip(self.deliver_all(&routed, now)) {
            let Ok(published) = outcome else {
                continue;
            };
            match delivered {
                Ok(d) => {
                    published.routed += d.routed;
                    published.pending.waits.extend(d.pending.waits);
                }
                Err(e) => *outcome = Err(e),
            }
        }
        outcomes
    }

    /// Where a publish goes (the queues and delayed stores it is routed
    /// to), refusing a missing or internal exchange. Stamps the publish
    /// time and takes `BCC` out of the headers, which route but are never
    /// delivered.
    fn route_publish<'t>(
        topo: &'t Topology,
        vhost: &str,
        message: &mut Message,
        now: i64,
        scratch: &mut RouteScratch<'t>,
    ) -> Result<Destinations, MessagingError> {
        if message.published_ms == 0 {
            message.published_ms = now;
        }
        Self::publishable(topo, vhost, &message.exchange)?;
        let mut extra = extra_keys(&message.headers, "CC");
        let bcc = extra_keys(&message.headers, "BCC");
        if !bcc.is_empty() {
            extra.extend(bcc);
            message.headers.retain(|(k, _)| k != "BCC");
        }
        let with_extra: Vec<String>;
        let keys = if extra.is_empty() {
            std::slice::from_ref(&message.routing_key)
        } else {
            with_extra = std::iter::once(message.routing_key.clone())
                .chain(extra)
                .collect();
            &with_extra
        };
        let route = Self::route(
            topo,
            &message.exchange,
            keys,
            &message.headers,
            None,
            now,
            scratch,
        );
        Ok((route.queues, route.delayed))
    }

    /// Refuses a publish to an exchange that does not exist or is internal.
    fn publishable(topo: &Topology, vhost: &str, exchange: &str) -> Result<(), MessagingError> {
        let Some(x) = topo.exchanges.get(exchange) else {
            return Err(not_found("exchange", exchange, vhost));
        };
        if x.spec.internal {
            return Err(MessagingError::AccessRefused(format!(
                "cannot publish to internal {}",
                rs("exchange", exchange, vhost)
            )));
        }
        Ok(())
    }

    pub fn check_publish(&self, vhost: &str, exchange: &str) -> Result<(), MessagingError> {
        let v = self.vhost(vhost)?;
        let topo = v.read();
        Self::publishable(&topo, vhost, exchange)
    }

    /// Appends a message to the delayed exchanges' stores it was routed to.
    fn hold_delayed(
        &self,
        delayed: Vec<(Arc<QueueInner>, i64)>,
        message: &Message,
        now: i64,
    ) -> Result<Published, MessagingError> {
        let mut published = Published {
            routed: 0,
            pending: PendingDurability::default(),
        };
        for (store, at) in delayed {
            let batch = codec::encode_batch(message, Some(at), now);
            let meta = Meta {
                persistent: message.persistent,
                priority: 0,
                ttl_ms: None,
                deliver_at_ms: Some(at),
            };
            let mut outbox = Vec::new();
            let appended = store.append(&batch, &meta, message.body.len() as u64, &mut outbox);
            store.finish(outbox);
            if let Appended::Stored(wait) = appended? {
                published.routed += 1;
                if let Some(info) = wait {
                    published.pending.waits.push((store.log.clone(), info));
                }
            }
        }
        Ok(published)
    }

    /// Appends messages to the queues each was routed to, in order, with
    /// one write per queue for all the messages it takes. Per message: how
    /// many queues took it and what to await, or the error of a queue that
    /// refused it (reject-publish) or could not store it.
    fn deliver_all(
        &self,
        routed: &[(&Message, Vec<Arc<Queue>>)],
        now: i64,
    ) -> Vec<Result<Published, MessagingError>> {
        let batches: Vec<Vec<u8>> = routed
            .iter()
            .map(|(m, queues)| {
                if queues.is_empty() {
                    Vec::new()
                } else {
                    codec::encode_batch(m, None, now)
                }
            })
            .collect();
        let metas: Vec<Meta> = routed.iter().map(|(m, _)| Meta::of(m, None)).collect();
        // Each queue, in the order first routed to, with its messages.
        let mut by_queue: Vec<(&Arc<Queue>, Vec<usize>)> = Vec::new();
        let mut slot: FxHashMap<*const Queue, usize> = FxHashMap::default();
        for (i, (_, queues)) in routed.iter().enumerate() {
            for q in queues {
                let s = *slot.entry(Arc::as_ptr(q)).or_insert_with(|| {
                    by_queue.push((q, Vec::new()));
                    by_queue.len() - 1
                });
                by_queue[s].1.push(i);
            }
        }
        let mut out: Vec<Result<Published, MessagingError>> = routed
            .iter()
            .map(|_| {
                Ok(Published {
                    routed: 0,
                    pending: PendingDurability::default(),
                })
            })
            .collect();
        let mut full: Vec<Option<String>> = vec![None; routed.len()];
        for (q, taken) in by_queue {
            let entries: Vec<Entry<'_>> = taken
                .iter()
                .map(|&i| Entry {
                    batch: &batches[i],
                    meta: &metas[i],
                    body_bytes: routed[i].0.body.len() as u64,
                })
                .collect();
            let mut outbox = Vec::new();
            let appended = q.inner.append_all(&entries, &mut outbox);
            q.inner.finish(outbox);
            let appended = match appended {
                Ok(a) => a,
                Err(e) => {
                    for &i in &taken {
                        out[i] = Err(e.clone());
                    }
                    continue;
                }
            };
            let mut letters = Vec::new();
            for (&i, a) in taken.iter().zip(appended) {
                let Ok(published) = &mut out[i] else {
                    continue;
                };
                match a {
                    Appended::Stored(wait) => {
                        published.routed += 1;
                        if let Some(info) = wait {
                            published.pending.waits.push((q.inner.log.clone(), info));
                        }
                    }
                    Appended::Refused { dead_letter } => {
                        published.routed += 1;
                        if dead_letter {
                            letters.push(DeadLetter {
                                offset: 0,
                                message: routed[i].0.clone(),
                                reason: DeathReason::Maxlen,
                            });
                        }
                        full[i] = Some(q.inner.cfg.name.clone());
                    }
                    Appended::Gone => {}
                }
            }
            if !letters.is_empty() {
                self.dead_letter(&q.inner.cfg, &letters);
            }
        }
        for (o, name) in out.iter_mut().zip(full) {
            if let (Ok(_), Some(name)) = (&o, name) {
                *o = Err(MessagingError::QueueFull(name));
            }
        }
        out
    }

    /// Republishes messages a queue dead-letters, each with a `Death` for
    /// this queue and reason merged into its history. Failures are logged:
    /// the message is then dropped, as RabbitMQ drops it.
    pub fn dead_letter(&self, from: &QueueConfig, letters: &[DeadLetter]) {
        let Some(dlx) = from.args.dead_letter_exchange.clone() else {
            return;
        };
        let Ok(v) = self.vhost(&from.vhost) else {
            return;
        };
        let now = self.now_ms();
        for letter in letters {
            let mut m = letter.message.clone();
            let mut original_keys = vec![m.routing_key.clone()];
            original_keys.extend(extra_keys(&m.headers, "CC"));
            let time_s = u64::try_from(now / 1000).unwrap_or(0);
            let original_expiration = original_expiration(&m);
            match m
                .deaths
                .iter()
                .position(|d| d.queue == from.name && d.reason == letter.reason)
            {
                Some(i) => {
                    let mut d = m.deaths.remove(i);
                    d.count += 1;
                    m.deaths.insert(0, d);
                }
                None => m.deaths.insert(
                    0,
                    Death {
                        queue: from.name.clone(),
                        reason: letter.reason,
                        count: 1,
                        exchange: m.exchange.clone(),
                        routing_keys: original_keys,
                        time_s,
                        original_expiration,
                    },
                ),
            }
            if let Some(k) = &from.args.dead_letter_routing_key {
                m.routing_key = k.clone();
                m.headers.retain(|(k, _)| k != "CC" && k != "BCC");
            }
            m.exchange = dlx.clone();
            m.ttl = None;
            let queues: Vec<Arc<Queue>> = {
                let topo = v.read();
                if !topo.exchanges.contains_key(&dlx) {
                    tracing::debug!(vhost = %from.vhost, queue = %from.name, exchange = dlx, "dead-letter exchange does not exist; message dropped");
                    continue;
                }
                let mut keys = vec![m.routing_key.clone()];
                keys.extend(extra_keys(&m.headers, "CC"));
                let mut scratch = RouteScratch::default();
                let route = Self::route(&topo, &dlx, &keys, &m.headers, None, now, &mut scratch);
                route
                    .queues
                    .into_iter()
                    .filter(|q| !is_cycle(&m.deaths, &q.inner.cfg.name))
                    .collect()
            };
            if let Some(Err(e)) = self.deliver_all(&[(&m, queues)], now).pop()
                && !matches!(e, MessagingError::QueueFull(_))
            {
                tracing::warn!(vhost = %from.vhost, queue = %from.name, error = %e, "dead-lettering failed; message dropped");
            }
        }
    }

    // ---- listing, timers, shutdown ----

    pub fn list(&self, vhost: &str) -> (Vec<ExchangeSpec>, Vec<QueueInfo>) {
        let Ok(v) = self.vhost(vhost) else {
            return (Vec::new(), Vec::new());
        };
        let topo = v.read();
        let mut exchanges: Vec<ExchangeSpec> =
            topo.exchanges.values().map(|x| x.spec.clone()).collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        let mut queues: Vec<QueueInfo> = topo.queues.values().map(|q| q.inner.info()).collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        (exchanges, queues)
    }

    /// Every queue, with the vhost and exchange of delayed stores.
    fn all_queues(&self) -> Vec<QueueAndOwner> {
        let mut out = Vec::new();
        for v in read(&self.vhosts).values() {
            let topo = v.read();
            for q in topo.queues.values() {
                out.push((q.inner.clone(), None));
            }
            for (name, x) in &topo.exchanges {
                if let Some(s) = &x.store {
                    out.push((s.clone(), Some((v.clone(), name.clone()))));
                }
            }
        }
        out
    }

    /// Starts the timer task if a tokio runtime is at hand and it is not
    /// running yet.
    pub fn ensure_timers(&self) {
        if self.timers_started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.timers_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.me.clone();
        let tick = self.config.timer_tick;
        handle.spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(shared) = me.upgrade() else {
                    return;
                };
                let work = tokio::task::spawn_blocking(move || shared.tick());
                if let Err(e) = work.await {
                    tracing::error!(error = %e, "messaging timer panicked");
                }
            }
        });
    }

    /// One round of background work over every queue. Blocking.
    pub fn tick(&self) {
        for (q, store_of) in self.all_queues() {
            let outcome = q.tick();
            if let Some((v, exchange)) = store_of {
                self.release_delayed(&v, &exchange, &q);
                continue;
            }
            if outcome.expired {
                self.delete_queue_instance(&q.cfg.vhost, &q.cfg.name, &q.cfg.id);
            }
        }
    }

    /// Routes the delayed messages of `exchange` that are due.
    fn release_delayed(&self, v: &Vhost, exchange: &str, store: &QueueInner) {
        for _ in 0..DELAYED_RELEASE_PER_TICK_MAX {
            let Ok(Some(d)) = store.get(false) else {
                return;
            };
            let now = self.now_ms();
            let m = d.message;
            let mut keys = vec![m.routing_key.clone()];
            keys.extend(extra_keys(&m.headers, "CC"));
            let queues: Vec<Arc<Queue>> = {
                let topo = v.read();
                let mut scratch = RouteScratch::default();
                let undelayed = Some(exchange);
                Self::route(
                    &topo,
                    exchange,
                    &keys,
                    &m.headers,
                    undelayed,
                    now,
                    &mut scratch,
                )
                .queues
            };
            if let Some(Err(e)) = self.deliver_all(&[(&m, queues)], now).pop()
                && !matches!(e, MessagingError::QueueFull(_))
            {
                tracing::warn!(vhost = %v.name, exchange, error = %e, "could not route a delayed message");
            }
            if let Err(e) = store.ack(d.id) {
                tracing::warn!(vhost = %v.name, exchange, error = %e, "could not settle a delayed message");
            }
        }
    }

    /// Flushes every queue, for a clean shutdown. Blocking.
    pub fn shutdown(&self) {
        for (q, _) in self.all_queues() {
            q.shutdown();
        }
    }
}

/// Read-only views for the admin API (`messaging/inspect.rs`).
impl Shared {
    /// Every vhost's name, sorted.
    pub fn vhost_names(&self) -> Vec<String> {
        read(&self.vhosts).keys().cloned().collect()
    }

    /// Every queue of a vhost, sorted by name; empty for an unknown vhost.
    pub fn queues_of(&self, vhost: &str) -> Vec<Arc<Queue>> {
        let Ok(v) = self.vhost(vhost) else {
            return Vec::new();
        };
        let topo = v.read();
        let mut queues: Vec<Arc<Queue>> = topo.queues.values().cloned().collect();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        queues
    }

    /// Every binding of a vhost as (source exchange, binding), sorted by
    /// source; empty for an unknown vhost.
    pub fn bindings_of(&self, vhost: &str) -> Vec<(String, Binding)> {
        let Ok(v) = self.vhost(vhost) else {
            return Vec::new();
        };
        let topo = v.read();
        let mut out: Vec<(String, Binding)> = topo
            .exchanges
            .iter()
            .flat_map(|(name, x)| x.bindings.all().iter().map(|b| (name.clone(), b.clone())))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1.dest, &a.1.key).cmp(&(&b.0, &b.1.dest, &b.1.key)));
        out
    }
}

/// Whether dead-lettering into `queue` closes a cycle with no rejection in
/// it (RabbitMQ then drops the message rather than loop forever).
fn is_cycle(deaths: &[Death], queue: &str) -> bool {
    for d in deaths {
        if d.reason == DeathReason::Rejected {
            return false;
        }
        if d.queue == queue {
            return true;
        }
    }
    false
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
