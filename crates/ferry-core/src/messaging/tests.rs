//! Tests of the messaging engine through its public API, on a real broker
//! data directory.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::{Broker, BrokerConfig};

const C1: ConnectionId = 1;
const C2: ConnectionId = 2;

struct Env {
    dir: tempfile::TempDir,
    broker: Option<Arc<Broker>>,
    segment_bytes: u64,
}

impl Env {
    fn new() -> Env {
        Self::with_segments(8 * 1024 * 1024)
    }

    fn with_segments(segment_bytes: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Env {
            dir,
            broker: None,
            segment_bytes,
        };
        env.open();
        env
    }

    fn open(&mut self) {
        let mut config = BrokerConfig::new(self.dir.path());
        config.queue_segment_bytes = self.segment_bytes;
        self.broker = Some(Broker::open(config).unwrap());
    }

    /// A clean restart: shutdown, drop, open.
    fn restart(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown();
        }
        self.open();
    }

    /// A crash of the process: no shutdown.
    fn crash(&mut self) {
        self.broker = None;
        self.open();
    }

    fn m(&self) -> &Messaging {
        self.broker.as_ref().unwrap().messaging()
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        self.m().queue("/", name, C1).unwrap()
    }

    fn declare(&self, name: &str, durable: bool, args: Arguments) -> QueueInfo {
        self.m()
            .declare_queue("/", queue_spec(name, durable, args), false, C1)
            .unwrap()
    }

    fn exchange(&self, name: &str, kind: ExchangeKind) {
        self.m()
            .declare_exchange("/", exchange_spec(name, kind), false)
            .unwrap();
    }

    fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.m()
            .bind_queue("/", queue, exchange, key, vec![], C1)
            .unwrap();
    }

    fn publish(&self, exchange: &str, key: &str, body: &str) -> usize {
        self.m()
            .publish("/", msg(exchange, key, body))
            .unwrap()
            .routed
    }

    fn bodies(&self, queue: &str) -> Vec<String> {
        let q = self.queue(queue);
        let mut out = Vec::new();
        while let Some(d) = q.get(true).unwrap() {
            out.push(body(&d));
        }
        out
    }
}

fn queue_spec(name: &str, durable: bool, arguments: Arguments) -> QueueSpec {
    QueueSpec {
        name: name.to_string(),
        durable,
        exclusive_owner: None,
        auto_delete: false,
        arguments,
    }
}

fn exchange_spec(name: &str, kind: ExchangeKind) -> ExchangeSpec {
    ExchangeSpec {
        name: name.to_string(),
        kind,
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: vec![],
    }
}

fn msg(exchange: &str, key: &str, body: &str) -> Message {
    Message {
        exchange: exchange.to_string(),
        routing_key: key.to_string(),
        properties: Bytes::from_static(b"props"),
        headers: vec![],
        body: Bytes::copy_from_slice(body.as_bytes()),
        priority: 0,
        ttl: None,
        persistent: true,
        published_ms: 0,
        deaths: vec![],
    }
}

fn s(v: &str) -> FieldValue {
    FieldValue::Str(Bytes::copy_from_slice(v.as_bytes()))
}

fn arg(k: &str, v: FieldValue) -> (String, FieldValue) {
    (k.to_string(), v)
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.message.body.to_vec()).unwrap()
}

fn consumer_spec(tag: &str) -> ConsumerSpec {
    ConsumerSpec {
        tag: tag.to_string(),
        no_ack: false,
        exclusive: false,
        priority: 0,
        connection: C1,
        stream_offset: None,
    }
}

async fn next(c: &mut Consumer) -> Option<Delivery> {
    tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .expect("a delivery within 5 s")
}

async fn nothing_within(c: &mut Consumer, ms: u64) {
    assert!(
        tokio::time::timeout(Duration::from_millis(ms), c.next())
            .await
            .is_err(),
        "expected no delivery"
    );
}

// ---- routing ----

#[tokio::test]
async fn direct_fanout_topic_and_headers_routing() {
    let env = Env::new();
    for q in ["d1", "d2", "f1", "f2", "t1", "t2", "h1", "h2"] {
        env.declare(q, false, vec![]);
    }
    env.bind("d1", "amq.direct", "k1");
    env.bind("d2", "amq.direct", "k2");
    env.bind("f1", "amq.fanout", "ignored");
    env.bind("f2", "amq.fanout", "");
    env.bind("t1", "amq.topic", "stock.*.nyse");
    env.bind("t2", "amq.topic", "stock.#");
    env.m()
        .bind_queue(
            "/",
            "h1",
            "amq.headers",
            "",
            vec![arg("x-match", s("all")), arg("a", s("1")), arg("b", s("2"))],
            C1,
        )
        .unwrap();
    env.m()
        .bind_queue(
            "/",
            "h2",
            "amq.match",
            "",
            vec![arg("x-match", s("any")), arg("a", s("1")), arg("b", s("2"))],
            C1,
        )
        .unwrap();

    assert_eq!(env.publish("amq.direct", "k1", "d"), 1);
    assert_eq!(env.publish("amq.direct", "nope", "d"), 0);
    assert_eq!(env.publish("amq.fanout", "whatever", "f"), 2);
    assert_eq!(env.publish("amq.topic", "stock.ibm.nyse", "t"), 2);
    assert_eq!(env.publish("amq.topic", "stock", "t-only-hash"), 1);
    assert_eq!(env.publish("amq.topic", "bond.x", "none"), 0);
    let mut h = msg("amq.headers", "", "h-all");
    h.headers = vec![arg("a", s("1")), arg("b", s("2")), arg("c", s("3"))];
    assert_eq!(env.m().publish("/", h).unwrap().routed, 1);
    let mut h = msg("amq.match", "", "h-any");
    h.headers = vec![arg("b", s("2"))];
    assert_eq!(env.m().publish("/", h).unwrap().routed, 1);
    let mut h = msg("amq.match", "", "h-none");
    h.headers = vec![arg("b", FieldValue::Int(2))];
    assert_eq!(env.m().publish("/", h).unwrap().routed, 0);

    assert_eq!(env.bodies("d1"), ["d"]);
    assert!(env.bodies("d2").is_empty());
    assert_eq!(env.bodies("f1"), ["f"]);
    assert_eq!(env.bodies("f2"), ["f"]);
    assert_eq!(env.bodies("t1"), ["t"]);
    assert_eq!(env.bodies("t2"), ["t", "t-only-hash"]);
    assert_eq!(env.bodies("h1"), ["h-all"]);
    assert_eq!(env.bodies("h2"), ["h-any"]);
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name_and_cannot_be_touched() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    assert_eq!(env.publish("", "q", "hello"), 1);
    assert_eq!(env.publish("", "other", "lost"), 0);
    let refused = MessagingError::AccessRefused(
        "operation not permitted on the default exchange".to_string(),
    );
    assert_eq!(
        env.m()
            .declare_exchange("/", exchange_spec("", ExchangeKind::Direct), false),
        Err(refused.clone())
    );
    assert_eq!(
        env.m().delete_exchange("/", "", false),
        Err(refused.clone())
    );
    assert_eq!(
        env.m().bind_queue("/", "q", "", "q", vec![], C1),
        Err(refused.clone())
    );
    assert_eq!(
        env.m().bind_exchange("/", "", "amq.direct", "k", vec![]),
        Err(refused)
    );
    assert_eq!(env.bodies("q"), ["hello"]);
    let err = env.m().publish("/", msg("missing", "k", "x")).unwrap_err();
    assert_eq!(err.to_string(), "no exchange 'missing' in vhost '/'");
}

#[tokio::test]
async fn reserved_names_and_equivalence_errors_use_rabbitmq_wording() {
    let env = Env::new();
    assert_eq!(
        env.m()
            .declare_exchange("/", exchange_spec("amq.x", ExchangeKind::Direct), false),
        Err(MessagingError::AccessRefused(
            "exchange name 'amq.x' contains reserved prefix 'amq.*'".into()
        ))
    );
    // Re-declaring an existing amq.* exchange as it is works.
    env.exchange("amq.topic", ExchangeKind::Topic);
    assert_eq!(
        env.m()
            .declare_queue("/", queue_spec("amq.q", true, vec![]), false, C1),
        Err(MessagingError::AccessRefused(
            "queue name 'amq.q' contains reserved prefix 'amq.*'".into()
        ))
    );
    let mut x = exchange_spec("x", ExchangeKind::Direct);
    x.durable = false;
    env.m().declare_exchange("/", x.clone(), false).unwrap();
    x.durable = true;
    assert_eq!(
        env.m().declare_exchange("/", x.clone(), false),
        Err(MessagingError::PreconditionFailed(
            "inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'".into()
        ))
    );
    x.durable = false;
    x.kind = ExchangeKind::Fanout;
    assert_eq!(
        env.m().declare_exchange("/", x.clone(), false),
        Err(MessagingError::PreconditionFailed(
            "inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'".into()
        ))
    );
    // Passive declares check existence only.
    env.m().declare_exchange("/", x, true).unwrap();
    let err = env
        .m()
        .declare_exchange("/", exchange_spec("nope", ExchangeKind::Direct), true)
        .unwrap_err();
    assert_eq!(
        err,
        MessagingError::NotFound {
            kind: "exchange",
            name: "nope".into(),
            vhost: "/".into()
        }
    );

    env.declare("q", true, vec![arg("x-max-length", FieldValue::Int(10))]);
    assert_eq!(
        env.m()
            .declare_queue("/", queue_spec("q", false, vec![arg("x-max-length", FieldValue::Int(10))]), false, C1),
        Err(MessagingError::PreconditionFailed(
            "inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'".into()
        ))
    );
    assert_eq!(
        env.m()
            .declare_queue("/", queue_spec("q", true, vec![]), false, C1),
        Err(MessagingError::PreconditionFailed(
            "inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received none but current is the value '10' of type 'signedint'".into()
        ))
    );
    // Unknown arguments are not compared; passive declares compare nothing.
    env.m()
        .declare_queue(
            "/",
            queue_spec(
                "q",
                true,
                vec![
                    arg("x-max-length", FieldValue::Int(10)),
                    arg("x-foo", FieldValue::Int(1)),
                ],
            ),
            false,
            C1,
        )
        .unwrap();
    env.m()
        .declare_queue("/", queue_spec("q", false, vec![]), true, C1)
        .unwrap();
    assert!(matches!(
        env.m()
            .declare_queue("/", queue_spec("nope", true, vec![]), true, C1),
        Err(MessagingError::NotFound { kind: "queue", .. })
    ));
    let err = env
        .m()
        .declare_queue(
            "/",
            queue_spec("bad", true, vec![arg("x-max-length", FieldValue::Int(-1))]),
            false,
            C1,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid arg 'x-max-length' for queue 'bad' in vhost '/': {value_negative,-1}"
    );
    assert!(matches!(
        env.m().declare_queue("/", queue_spec("qq", false, vec![arg("x-queue-type", s("quorum"))]), false, C1),
        Err(MessagingError::PreconditionFailed(t)) if t == "invalid property 'non-durable' for queue 'qq' in vhost '/'"
    ));
}

#[tokio::test]
async fn exchange_to_exchange_bindings_visit_each_exchange_once() {
    let env = Env::new();
    env.exchange("a", ExchangeKind::Fanout);
    env.exchange("b", ExchangeKind::Fanout);
    env.exchange("c", ExchangeKind::Topic);
    env.m().bind_exchange("/", "b", "a", "", vec![]).unwrap();
    env.m().bind_exchange("/", "a", "b", "", vec![]).unwrap();
    env.m().bind_exchange("/", "c", "b", "", vec![]).unwrap();
    env.m().bind_exchange("/", "a", "c", "#", vec![]).unwrap();
    env.declare("q", false, vec![]);
    env.bind("q", "a", "");
    env.bind("q", "c", "x.*");
    assert_eq!(env.publish("a", "x.y", "once"), 1);
    assert_eq!(env.publish("c", "x.y", "via c"), 1);
    assert_eq!(env.bodies("q"), ["once", "via c"]);
    // Unbinding breaks the path.
    env.m().unbind_exchange("/", "b", "a", "", vec![]).unwrap();
    env.m()
        .unbind_queue("/", "q", "c", "x.*", vec![], C1)
        .unwrap();
    assert_eq!(env.publish("b", "x.y", "b"), 1);
    assert_eq!(env.bodies("q"), ["b"]);
}

#[tokio::test]
async fn alternate_and_internal_exchanges() {
    let env = Env::new();
    env.exchange("ae", ExchangeKind::Fanout);
    let mut main = exchange_spec("main", ExchangeKind::Direct);
    main.arguments = vec![arg("alternate-exchange", s("ae"))];
    env.m().declare_exchange("/", main, false).unwrap();
    env.declare("routed", false, vec![]);
    env.declare("unrouted", false, vec![]);
    env.bind("routed", "main", "k");
    env.bind("unrouted", "ae", "");
    assert_eq!(env.publish("main", "k", "normal"), 1);
    assert_eq!(env.publish("main", "other", "alt"), 1);
    assert_eq!(env.bodies("routed"), ["normal"]);
    assert_eq!(env.bodies("unrouted"), ["alt"]);

    let mut internal = exchange_spec("internal", ExchangeKind::Fanout);
    internal.internal = true;
    env.m().declare_exchange("/", internal, false).unwrap();
    env.bind("routed", "internal", "");
    env.m()
        .bind_exchange("/", "internal", "amq.fanout", "", vec![])
        .unwrap();
    assert_eq!(
        env.m().publish("/", msg("internal", "", "x")).unwrap_err(),
        MessagingError::AccessRefused(
            "cannot publish to internal exchange 'internal' in vhost '/'".into()
        )
    );
    assert_eq!(env.publish("amq.fanout", "", "through"), 1);
    assert_eq!(env.bodies("routed"), ["through"]);
}

#[tokio::test]
async fn auto_delete_exchanges_go_with_their_last_binding() {
    let env = Env::new();
    let mut x = exchange_spec("ad", ExchangeKind::Direct);
    x.auto_delete = true;
    env.m().declare_exchange("/", x, false).unwrap();
    env.declare("q1", false, vec![]);
    env.declare("q2", false, vec![]);
    env.bind("q1", "ad", "k");
    env.bind("q2", "ad", "k");
    env.m()
        .unbind_queue("/", "q1", "ad", "k", vec![], C1)
        .unwrap();
    assert!(
        env.m()
            .declare_exchange("/", exchange_spec("ad", ExchangeKind::Direct), true)
            .is_ok()
    );
    // Deleting the last bound queue removes the binding, then the exchange.
    env.m().delete_queue("/", "q2", false, false, C1).unwrap();
    assert!(matches!(
        env.m()
            .declare_exchange("/", exchange_spec("ad", ExchangeKind::Direct), true),
        Err(MessagingError::NotFound { .. })
    ));
}

// ---- queue lifecycle ----

#[tokio::test]
async fn exclusive_queues_belong_to_one_connection() {
    let env = Env::new();
    let mut spec = queue_spec("ex", false, vec![]);
    spec.exclusive_owner = Some(C1);
    env.m().declare_queue("/", spec.clone(), false, C1).unwrap();
    let locked = |name: &str| {
        MessagingError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ))
    };
    assert_eq!(env.m().queue("/", "ex", C2).unwrap_err(), locked("ex"));
    assert_eq!(
        env.m()
            .declare_queue("/", queue_spec("ex", false, vec![]), true, C2)
            .unwrap_err(),
        locked("ex")
    );
    assert_eq!(
        env.m()
            .delete_queue("/", "ex", false, false, C2)
            .unwrap_err(),
        locked("ex")
    );
    assert_eq!(
        env.m()
            .bind_queue("/", "ex", "amq.direct", "k", vec![], C2)
            .unwrap_err(),
        locked("ex")
    );
    // Non-exclusive re-declare by the owner: also locked, as RabbitMQ says.
    assert_eq!(
        env.m()
            .declare_queue("/", queue_spec("ex", false, vec![]), false, C1)
            .unwrap_err(),
        locked("ex")
    );
    env.m().declare_queue("/", spec, false, C1).unwrap();
    // Anyone may publish to it.
    assert_eq!(env.publish("", "ex", "x"), 1);
    env.m().connection_closed(C1);
    assert!(matches!(
        env.m().queue("/", "ex", C1),
        Err(MessagingError::NotFound { .. })
    ));
}

#[tokio::test]
async fn server_named_queues() {
    let env = Env::new();
    let a = env.declare("", false, vec![]);
    let b = env.declare("", false, vec![]);
    assert!(a.name.starts_with("amq.gen-"), "{}", a.name);
    assert_eq!(a.name.len(), "amq.gen-".len() + 22);
    assert_ne!(a.name, b.name);
    env.queue(&a.name);
}

#[tokio::test]
async fn auto_delete_queue_goes_when_its_last_consumer_does() {
    let env = Env::new();
    let mut spec = queue_spec("ad", false, vec![]);
    spec.auto_delete = true;
    env.m().declare_queue("/", spec, false, C1).unwrap();
    let q = env.queue("ad");
    let c1 = q.consume(consumer_spec("c1")).unwrap();
    let c2 = q.consume(consumer_spec("c2")).unwrap();
    drop(c1);
    env.queue("ad");
    assert!(q.cancel("c2"));
    drop(c2);
    assert!(env.m().queue("/", "ad", C1).is_err());
}

#[tokio::test]
async fn unused_queues_expire() {
    let env = Env::new();
    env.declare("exp", false, vec![arg("x-expires", FieldValue::Int(50))]);
    env.m().run_timers_once();
    env.queue("exp");
    tokio::time::sleep(Duration::from_millis(80)).await;
    env.m().run_timers_once();
    assert!(env.m().queue("/", "exp", C1).is_err());
}

#[tokio::test]
async fn delete_if_unused_if_empty_and_purge() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    env.publish("", "q", "1");
    env.publish("", "q", "2");
    assert_eq!(
        env.m().delete_queue("/", "q", false, true, C1).unwrap_err(),
        MessagingError::PreconditionFailed("queue 'q' in vhost '/' not empty".into())
    );
    let q = env.queue("q");
    let c = q.consume(consumer_spec("c")).unwrap();
    assert_eq!(
        env.m().delete_queue("/", "q", true, false, C1).unwrap_err(),
        MessagingError::PreconditionFailed("queue 'q' in vhost '/' in use".into())
    );
    drop(c);
    assert_eq!(q.purge().unwrap(), 2);
    assert_eq!(q.info().message_count, 0);
    env.publish("", "q", "3");
    assert_eq!(env.m().delete_queue("/", "q", false, false, C1).unwrap(), 1);
    assert_eq!(env.m().delete_queue("/", "q", false, false, C1).unwrap(), 0);
}

// ---- delivery ----

#[tokio::test]
async fn fifo_get_ack_reject_and_redelivery_flags() {
    let env = Env::new();
    env.declare("q", true, vec![]);
    for i in 0..5 {
        env.publish("", "q", &i.to_string());
    }
    let q = env.queue("q");
    assert_eq!(q.info().message_count, 5);
    let d0 = q.get(false).unwrap().unwrap();
    assert_eq!(
        (body(&d0), d0.redelivered, d0.delivery_count, d0.remaining),
        ("0".into(), false, 1, 4)
    );
    assert_eq!(d0.message.properties, Bytes::from_static(b"props"));
    let d1 = q.get(false).unwrap().unwrap();
    q.ack(d0.id).unwrap();
    assert!(matches!(
        q.ack(d0.id),
        Err(MessagingError::PreconditionFailed(_))
    ));
    q.reject(d1.id, true).unwrap();
    // The requeued message comes back first, flagged.
    let again = q.get(false).unwrap().unwrap();
    assert_eq!(
        (body(&again), again.redelivered, again.delivery_count),
        ("1".into(), true, 2)
    );
    q.reject(again.id, false).unwrap();
    let rest: Vec<String> = std::iter::from_fn(|| q.get(true).unwrap())
        .map(|d| body(&d))
        .collect();
    assert_eq!(rest, ["2", "3", "4"]);
    assert_eq!(q.unsettled(), 0);
}

#[tokio::test]
async fn consumers_share_messages_round_robin() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    let q = env.queue("q");
    let mut a = q.consume(consumer_spec("a")).unwrap();
    let mut b = q.consume(consumer_spec("b")).unwrap();
    for i in 0..10 {
        env.publish("", "q", &i.to_string());
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..5 {
        let da = next(&mut a).await.unwrap();
        let db = next(&mut b).await.unwrap();
        got_a.push(body(&da));
        got_b.push(body(&db));
        q.ack(da.id).unwrap();
        q.ack(db.id).unwrap();
    }
    assert_eq!(got_a.len(), 5);
    assert_eq!(got_b.len(), 5);
    let mut all: Vec<String> = got_a.into_iter().chain(got_b).collect();
    all.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(all, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batch_takes_what_is_ready_unless_another_consumer_waits() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    let q = env.queue("q");
    let mut a = q.consume(consumer_spec("a")).unwrap();
    for i in 0..10 {
        env.publish("", "q", &i.to_string());
    }
    // Alone: up to the limit asked for, in order.
    let first = a.next_batch(4).await;
    assert_eq!(
        first.iter().map(body).collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    let rest = a.next_batch(100).await;
    assert_eq!(rest.len(), 6);
    // With another consumer waiting for its turn too, the first served
    // stops after one message, so both get some (the second, alone once the
    // first has returned, takes the rest).
    let b = q.consume(consumer_spec("b")).unwrap();
    let mut waiting = Vec::new();
    for mut c in [a, b] {
        waiting.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), c.next_batch(100))
                .await
                .expect("a delivery within 5 s")
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 10..14 {
        env.publish("", "q", &i.to_string());
    }
    let mut got = Vec::new();
    for w in waiting {
        got.push(w.await.unwrap().len());
    }
    got.sort();
    assert_eq!(got, [1, 3]);
}

#[test]
fn acks_written_later_are_kept_once_written() {
    let mut env = Env::new();
    env.declare("q", true, vec![]);
    for i in 0..6 {
        env.publish("", "q", &i.to_string());
    }
    let q = env.queue("q");
    let mut ds = Vec::new();
    while let Some(d) = q.get(false).unwrap() {
        ds.push(d);
    }
    for d in &ds[..4] {
        q.ack_journal_later(d.id).unwrap();
    }
    q.write_journal();
    drop(q);
    env.crash();
    assert_eq!(env.bodies("q"), ["4", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_consumers_alternate() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    let q = env.queue("q");
    let mut tasks = Vec::new();
    for tag in ["a", "b"] {
        let mut c = q.consume(consumer_spec(tag)).unwrap();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), c.next()).await
            {
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..100 {
        env.publish("", "q", &i.to_string());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    assert_eq!(counts.iter().sum::<i32>(), 100);
    assert!(counts.iter().all(|&n| (40..=60).contains(&n)), "{counts:?}");
}

#[tokio::test]
async fn higher_priority_consumers_go_first() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    let q = env.queue("q");
    let mut low = q.consume(consumer_spec("low")).unwrap();
    let mut spec = consumer_spec("high");
    spec.priority = 10;
    let mut high = q.consume(spec).unwrap();
    for i in 0..3 {
        env.publish("", "q", &i.to_string());
    }
    // Both wait; the high-priority one gets everything while it keeps coming back.
    let (l, h) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(200), low.next()),
        async {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(body(&next(&mut high).await.unwrap()));
            }
            got
        }
    );
    assert_eq!(h, ["0", "1", "2"]);
    assert!(l.is_err(), "the low-priority consumer got {l:?}");
    // A high-priority consumer that stops asking lets the low one have them.
    env.publish("", "q", "3");
    assert_eq!(body(&next(&mut low).await.unwrap()), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_high_priority_consumer_lets_lower_ones_take_over() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    let q = env.queue("q");
    let mut spec = consumer_spec("high");
    spec.priority = 10;
    let mut high = q.consume(spec).unwrap();
    let mut low = q.consume(consumer_spec("low")).unwrap();
    // The low-priority consumer waits before anything is published.
    let low_task = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(body(&next(&mut low).await.unwrap()));
        }
        got
    });
    // The high-priority one has room for five (prefetch 5) and then stops.
    let high_task = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(body(&next(&mut high).await.unwrap()));
        }
        (got, high)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..8 {
        env.publish("", "q", &format!("m{i}"));
    }
    let (high_got, _high) = high_task.await.unwrap();
    assert_eq!(high_got, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(low_task.await.unwrap(), ["m5", "m6", "m7"]);
}

#[tokio::test]
async fn single_active_consumer() {
    let env = Env::new();
    env.declare(
        "q",
        false,
        vec![arg("x-single-active-consumer", FieldValue::Bool(true))],
    );
    let q = env.queue("q");
    let mut first = q.consume(consumer_spec("first")).unwrap();
    let mut second = q.consume(consumer_spec("second")).unwrap();
    for i in 0..4 {
        env.publish("", "q", &i.to_string());
    }
    nothing_within(&mut second, 50).await;
    let d = next(&mut first).await.unwrap();
    assert_eq!(body(&d), "0");
    nothing_within(&mut second, 50).await;
    // The active consumer goes; its unacked message is requeued by the front
    // end, and the next consumer takes over from there, in order.
    assert!(q.cancel("first"));
    assert!(next(&mut first).await.is_none());
    q.reject(d.id, true).unwrap();
    let got: Vec<String> = [
        next(&mut second).await.unwrap(),
        next(&mut second).await.unwrap(),
    ]
    .iter()
    .map(body)
    .collect();
    assert_eq!(got, ["0", "1"]);
}

#[tokio::test]
async fn exclusive_consumers() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    let q = env.queue("q");
    let mut spec = consumer_spec("only");
    spec.exclusive = true;
    let c = q.consume(spec.clone()).unwrap();
    let refused = MessagingError::AccessRefused("queue 'q' in vhost '/' in exclusive use".into());
    assert_eq!(q.consume(consumer_spec("other")).unwrap_err(), refused);
    drop(c);
    let _c = q.consume(consumer_spec("other")).unwrap();
    spec.tag = "late".into();
    assert_eq!(q.consume(spec).unwrap_err(), refused);
}

#[tokio::test]
async fn no_ack_consumers_settle_on_delivery_and_cancel_ends_next() {
    let env = Env::new();
    env.declare("q", false, vec![]);
    let q = env.queue("q");
    let mut spec = consumer_spec("c");
    spec.no_ack = true;
    let mut c = q.consume(spec).unwrap();
    env.publish("", "q", "x");
    let d = next(&mut c).await.unwrap();
    assert_eq!(q.unsettled(), 0);
    assert!(q.ack(d.id).is_err());
    assert_eq!(c.tag(), "c");
    let waiting = tokio::spawn(async move { c.next().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    env.m().delete_queue("/", "q", false, false, C1).unwrap();
    assert!(waiting.await.unwrap().is_none());
}

#[tokio::test]
async fn priorities_deliver_high_first() {
    let env = Env::new();
    env.declare("p", true, vec![arg("x-max-priority", FieldValue::Int(5))]);
    for (prio, b) in [
        (0, "p0a"),
        (3, "p3a"),
        (9, "p9->5"),
        (1, "p1"),
        (3, "p3b"),
        (0, "p0b"),
    ] {
        let mut m = msg("", "p", b);
        m.priority = prio;
        env.m().publish("/", m).unwrap();
    }
    assert_eq!(env.queue("p").info().message_count, 6);
    assert_eq!(env.bodies("p"), ["p9->5", "p3a", "p3b", "p1", "p0a", "p0b"]);
    // Without x-max-priority, priorities are ignored.
    env.declare("plain", false, vec![]);
    for (prio, b) in [(0, "a"), (9, "b")] {
        let mut m = msg("", "plain", b);
        m.priority = prio;
        env.m().publish("/", m).unwrap();
    }
    assert_eq!(env.bodies("plain"), ["a", "b"]);
}

// ---- dead-lettering, TTL, limits ----

fn dlx_args(extra: Vec<(String, FieldValue)>) -> Arguments {
    let mut a = vec![
        arg("x-dead-letter-exchange", s("")),
        arg("x-dead-letter-routing-key", s("dlq")),
    ];
    a.extend(extra);
    a
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered_with_their_history() {
    let env = Env::new();
    env.declare("dlq", true, vec![]);
    env.declare("work", true, dlx_args(vec![]));
    env.publish("", "work", "poison");
    let work = env.queue("work");
    let d = work.get(false).unwrap().unwrap();
    work.reject(d.id, false).unwrap();
    let dead = env.queue("dlq").get(true).unwrap().unwrap();
    assert_eq!(body(&dead), "poison");
    assert_eq!(dead.message.routing_key, "dlq");
    assert_eq!(dead.message.exchange, "");
    assert_eq!(dead.message.deaths.len(), 1);
    let death = &dead.message.deaths[0];
    assert_eq!(
        (
            death.queue.as_str(),
            death.reason,
            death.count,
            death.exchange.as_str()
        ),
        ("work", DeathReason::Rejected, 1, "")
    );
    assert_eq!(death.routing_keys, ["work"]);
    // Moved back and rejected again: the count grows in place.
    let mut back = dead.message.clone();
    back.exchange = String::new();
    back.routing_key = "work".into();
    env.m().publish("/", back).unwrap();
    let d = work.get(false).unwrap().unwrap();
    work.reject(d.id, false).unwrap();
    let dead = env.queue("dlq").get(true).unwrap().unwrap();
    assert_eq!(dead.message.deaths.len(), 1);
    assert_eq!(dead.message.deaths[0].count, 2);
    assert_eq!(work.unsettled(), 0);
}

#[tokio::test]
async fn delivery_limit_dead_letters_with_reason_delivery_limit() {
    let env = Env::new();
    env.declare("dlq", true, vec![]);
    env.declare(
        "work",
        true,
        dlx_args(vec![arg("x-delivery-limit", FieldValue::Int(2))]),
    );
    env.publish("", "work", "poison");
    let work = env.queue("work");
    // RabbitMQ's rule: dead-lettered once returned more times than the limit.
    for attempt in 1..=3 {
        let d = work.get(false).unwrap().unwrap();
        assert_eq!(d.delivery_count, attempt);
        assert_eq!(d.redelivered, attempt > 1);
        work.reject(d.id, true).unwrap();
    }
    assert!(work.get(false).unwrap().is_none());
    let dead = env.queue("dlq").get(true).unwrap().unwrap();
    assert_eq!(dead.message.deaths[0].reason, DeathReason::DeliveryLimit);
}

#[tokio::test]
async fn expired_messages_anywhere_in_the_queue_are_dead_lettered() {
    let env = Env::new();
    env.declare("dlq", true, vec![]);
    env.declare("q", true, dlx_args(vec![]));
    env.publish("", "q", "keep-1");
    let mut short = msg("", "q", "short");
    short.ttl = Some(Duration::from_millis(30));
    env.m().publish("/", short).unwrap();
    env.publish("", "q", "keep-2");
    let q = env.queue("q");
    // The head is taken but not settled: the expiring message is behind it.
    let head = q.get(false).unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    env.m().run_timers_once();
    let dead = env.queue("dlq").get(true).unwrap().unwrap();
    assert_eq!(body(&dead), "short");
    assert_eq!(dead.message.deaths[0].reason, DeathReason::Expired);
    assert_eq!(
        dead.message.deaths[0].original_expiration.as_deref(),
        Some("30")
    );
    assert_eq!(dead.message.ttl, None);
    assert_eq!(q.info().message_count, 1);
    q.ack(head.id).unwrap();
    assert_eq!(env.bodies("q"), ["keep-2"]);
}

#[tokio::test]
async fn queue_ttl_expires_from_the_head() {
    let env = Env::new();
    env.declare("dlq", false, vec![]);
    env.declare(
        "q",
        false,
        dlx_args(vec![arg("x-message-ttl", FieldValue::Int(30))]),
    );
    for i in 0..3 {
        env.publish("", "q", &i.to_string());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    env.publish("", "q", "fresh");
    env.m().run_timers_once();
    assert_eq!(env.bodies("q"), ["fresh"]);
    assert_eq!(env.bodies("dlq"), ["0", "1", "2"]);
}

#[tokio::test]
async fn max_length_drop_head_and_reject_publish() {
    let env = Env::new();
    env.declare("dlq", false, vec![]);
    env.declare(
        "drop",
        false,
        dlx_args(vec![arg("x-max-length", FieldValue::Int(2))]),
    );
    for i in 0..5 {
        env.publish("", "drop", &i.to_string());
    }
    assert_eq!(env.bodies("drop"), ["3", "4"]);
    let dead: Vec<Delivery> = std::iter::from_fn(|| env.queue("dlq").get(true).unwrap()).collect();
    assert_eq!(dead.iter().map(body).collect::<Vec<_>>(), ["0", "1", "2"]);
    assert_eq!(dead[0].message.deaths[0].reason, DeathReason::Maxlen);

    env.declare(
        "reject",
        false,
        vec![
            arg("x-max-length", FieldValue::Int(2)),
            arg("x-overflow", s("reject-publish")),
        ],
    );
    env.publish("", "reject", "a");
    env.publish("", "reject", "b");
    assert_eq!(
        env.m().publish("/", msg("", "reject", "c")).unwrap_err(),
        MessagingError::QueueFull("reject".into())
    );
    assert_eq!(env.bodies("reject"), ["a", "b"]);

    env.declare(
        "reject-dlx",
        false,
        dlx_args(vec![
            arg("x-max-length-bytes", FieldValue::Int(3)),
            arg("x-overflow", s("reject-publish-dlx")),
        ]),
    );
    env.publish("", "reject-dlx", "abc");
    assert!(env.m().publish("/", msg("", "reject-dlx", "d")).is_err());
    assert_eq!(env.bodies("reject-dlx"), ["abc"]);
    assert_eq!(env.bodies("dlq"), ["d"]);
}

#[tokio::test]
async fn dead_letter_cycles_without_rejection_are_dropped() {
    let env = Env::new();
    // A queue that dead-letters expired messages to itself: RabbitMQ drops them.
    env.declare(
        "self",
        false,
        vec![
            arg("x-dead-letter-exchange", s("")),
            arg("x-message-ttl", FieldValue::Int(10)),
        ],
    );
    env.publish("", "self", "x");
    tokio::time::sleep(Duration::from_millis(30)).await;
    env.m().run_timers_once();
    env.m().run_timers_once();
    assert_eq!(env.queue("self").unsettled(), 0);
}

// ---- durability ----

fn durable_queue_survives(crash: bool) {
    let mut env = Env::new();
    env.declare("q", true, vec![]);
    env.declare("transient", false, vec![]);
    env.exchange("x", ExchangeKind::Topic);
    env.bind("q", "x", "a.#");
    for i in 0..6 {
        env.publish("", "q", &i.to_string());
    }
    env.publish("", "transient", "gone");
    let q = env.queue("q");
    let d0 = q.get(false).unwrap().unwrap();
    let d1 = q.get(false).unwrap().unwrap();
    let d2 = q.get(false).unwrap().unwrap();
    q.ack(d0.id).unwrap();
    q.reject(d1.id, true).unwrap();
    let _ = d2; // left in flight
    drop(q);
    if crash {
        env.crash();
    } else {
        env.restart();
    }
    assert!(env.m().queue("/", "transient", C1).is_err());
    let q = env.queue("q");
    assert_eq!(q.info().message_count, 5);
    let got: Vec<(String, bool, u32)> = std::iter::from_fn(|| q.get(false).unwrap())
        .map(|d| (body(&d), d.redelivered, d.delivery_count))
        .collect();
    assert_eq!(
        got,
        [
            ("1".to_string(), true, 2),
            ("2".to_string(), true, 2),
            ("3".to_string(), false, 1),
            ("4".to_string(), false, 1),
            ("5".to_string(), false, 1),
        ]
    );
    // The durable exchange and its binding came back too.
    assert_eq!(env.publish("x", "a.b", "routed"), 1);
    assert_eq!(
        q.get(true).unwrap().map(|d| body(&d)).as_deref(),
        Some("routed")
    );
}

#[test]
fn durable_queue_survives_a_clean_restart() {
    durable_queue_survives(false);
}

#[test]
fn durable_queue_survives_a_crash() {
    durable_queue_survives(true);
}

#[test]
fn settled_messages_never_come_back() {
    let mut env = Env::new();
    env.declare("q", true, vec![arg("x-max-priority", FieldValue::Int(3))]);
    for i in 0..10 {
        let mut m = msg("", "q", &i.to_string());
        m.priority = (i % 3) as u8;
        env.m().publish("/", m).unwrap();
    }
    let q = env.queue("q");
    let mut acked = Vec::new();
    for _ in 0..4 {
        let d = q.get(false).unwrap().unwrap();
        acked.push(body(&d));
        q.ack(d.id).unwrap();
    }
    q.purge().unwrap_or_default();
    drop(q);
    env.crash();
    assert_eq!(env.queue("q").info().message_count, 0);
    env.publish("", "q", "new");
    env.restart();
    assert_eq!(env.bodies("q"), ["new"]);
    assert_eq!(acked.len(), 4);
}

#[tokio::test]
async fn delayed_messages_survive_a_restart() {
    let mut env = Env::new();
    let mut x = exchange_spec("delayed", ExchangeKind::Delayed(DelayedRouting::Direct));
    x.arguments = vec![arg("x-delayed-type", s("direct"))];
    env.m().declare_exchange("/", x, false).unwrap();
    env.declare("q", true, vec![]);
    env.bind("q", "delayed", "k");
    let mut later = msg("delayed", "k", "later");
    later.headers = vec![arg("x-delay", FieldValue::Int(150))];
    assert_eq!(env.m().publish("/", later).unwrap().routed, 1);
    let mut now = msg("delayed", "k", "now");
    now.headers = vec![arg("x-delay", FieldValue::Int(0))];
    env.m().publish("/", now).unwrap();
    env.m().run_timers_once();
    assert_eq!(env.bodies("q"), ["now"]);
    env.restart();
    env.m().run_timers_once();
    assert!(env.bodies("q").is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.m().run_timers_once();
    assert_eq!(env.bodies("q"), ["later"]);
    // And it does not come again.
    env.restart();
    tokio::time::sleep(Duration::from_millis(20)).await;
    env.m().run_timers_once();
    assert!(env.bodies("q").is_empty());
}

fn segment_files(q: &Queue) -> usize {
    std::fs::read_dir(q.inner.cfg.dir.join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}

#[test]
fn draining_a_queue_gives_its_disk_back() {
    let env = Env::with_segments(16 * 1024);
    env.declare("q", true, vec![]);
    let payload = "x".repeat(100);
    for _ in 0..2000 {
        env.publish("", "q", &payload);
    }
    let q = env.queue("q");
    let full = segment_files(&q);
    assert!(full > 10, "{full} segments");
    let bytes_full = q.disk_bytes();
    // Half drained: the settled half's segments go.
    for _ in 0..1000 {
        let d = q.get(false).unwrap().unwrap();
        q.ack(d.id).unwrap();
    }
    env.m().run_timers_once();
    let half = segment_files(&q);
    assert!(half <= full / 2 + 2, "{half} of {full} segments left");
    while let Some(d) = q.get(false).unwrap() {
        q.ack(d.id).unwrap();
    }
    env.m().run_timers_once();
    assert!(
        segment_files(&q) <= 2,
        "{} segments left",
        segment_files(&q)
    );
    assert!(q.disk_bytes() < bytes_full / 10);
}

// ---- model-based ----

mod model {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Publish,
        Get { no_ack: bool },
        Ack(usize),
        Reject(usize, bool),
        Restart { crash: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Publish),
            3 => any::<bool>().prop_map(|no_ack| Op::Get { no_ack }),
            2 => any::<usize>().prop_map(Op::Ack),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Op::Reject(i, r)),
            1 => any::<bool>().prop_map(|crash| Op::Restart { crash }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// A durable queue behaves like a simple model: ready messages go out
        /// in publication order (requeued ones at their place), delivery
        /// counts and redelivered flags follow every delivery, a restart
        /// (clean or crash) makes every unsettled message ready again and
        /// never brings back a settled one.
        #[test]
        fn durable_queue_matches_the_model(ops in proptest::collection::vec(op(), 1..48)) {
            let mut env = Env::new();
            env.declare("q", true, vec![]);
            // id -> delivery count so far
            let mut ready: BTreeMap<u64, u32> = BTreeMap::new();
            let mut in_flight: Vec<(u64, u32)> = Vec::new();
            let mut published = 0u64;
            for op in ops {
                let q = env.queue("q");
                match op {
                    Op::Publish => {
                        env.publish("", "q", &published.to_string());
                        ready.insert(published, 0);
                        published += 1;
                    }
                    Op::Get { no_ack } => {
                        let got = q.get(no_ack).unwrap();
                        match ready.pop_first() {
                            None => prop_assert!(got.is_none()),
                            Some((id, count)) => {
                                let d = got.unwrap();
                                prop_assert_eq!(d.id, id);
                                prop_assert_eq!(body(&d), id.to_string());
                                prop_assert_eq!(d.delivery_count, count + 1);
                                prop_assert_eq!(d.redelivered, count > 0);
                                prop_assert_eq!(d.remaining, ready.len() as u64);
                                if !no_ack {
                                    in_flight.push((id, count + 1));
                                }
                            }
                        }
                    }
                    Op::Ack(i) if !in_flight.is_empty() => {
                        let (id, _) = in_flight.remove(i % in_flight.len());
                        q.ack(id).unwrap();
                        prop_assert!(q.ack(id).is_err());
                    }
                    Op::Reject(i, requeue) if !in_flight.is_empty() => {
                        let (id, count) = in_flight.remove(i % in_flight.len());
                        q.reject(id, requeue).unwrap();
                        if requeue {
                            ready.insert(id, count);
                        }
                    }
                    Op::Ack(_) | Op::Reject(..) => {}
                    Op::Restart { crash } => {
                        drop(q);
                        if crash { env.crash() } else { env.restart() }
                        ready.extend(in_flight.drain(..));
                    }
                }
                prop_assert_eq!(env.queue("q").info().message_count, ready.len() as u64);
            }
        }
    }
}

// ---- stream queues ----

fn stream_args() -> Arguments {
    vec![arg("x-queue-type", s("stream"))]
}

async fn publish_durably(env: &Env, exchange: &str, key: &str, body: &str) {
    let p = env.m().publish("/", msg(exchange, key, body)).unwrap();
    assert_eq!(p.routed, 1);
    p.pending.durable().await.unwrap();
}

fn stream_consumer(q: &Queue, tag: &str, offset: Option<StreamOffset>) -> Consumer {
    let mut spec = consumer_spec(tag);
    spec.stream_offset = offset;
    q.consume(spec).unwrap()
}

#[tokio::test]
async fn stream_queues_replay_from_any_offset_and_keep_what_is_acked() {
    let mut env = Env::new();
    env.declare("events", true, stream_args());
    for i in 0..5 {
        publish_durably(&env, "", "events", &i.to_string()).await;
    }
    let q = env.queue("events");
    assert_eq!(q.info().message_count, 5);
    assert!(matches!(
        q.get(false),
        Err(MessagingError::PreconditionFailed(_))
    ));
    let mut first = stream_consumer(&q, "first", Some(StreamOffset::First));
    for i in 0..5 {
        let d = next(&mut first).await.unwrap();
        assert_eq!(body(&d), i.to_string());
        assert_eq!(d.id, i);
        assert!(
            d.message
                .headers
                .contains(&arg("x-stream-offset", FieldValue::Int(i as i64)))
        );
        q.ack(d.id).unwrap();
    }
    let mut from3 = stream_consumer(&q, "from3", Some(StreamOffset::Offset(3)));
    assert_eq!(body(&next(&mut from3).await.unwrap()), "3");
    let mut last = stream_consumer(&q, "last", Some(StreamOffset::Last));
    assert_eq!(body(&next(&mut last).await.unwrap()), "4");
    let mut new_only = stream_consumer(&q, "next", None);
    nothing_within(&mut new_only, 30).await;
    publish_durably(&env, "", "events", "5").await;
    assert_eq!(body(&next(&mut new_only).await.unwrap()), "5");
    assert_eq!(body(&next(&mut first).await.unwrap()), "5");
    // Acked messages stay: a new reader from the start sees everything.
    let mut again = stream_consumer(&q, "again", Some(StreamOffset::First));
    assert_eq!(body(&next(&mut again).await.unwrap()), "0");
    let ts = stream_consumer(&q, "ts", Some(StreamOffset::Timestamp(0)));
    drop(ts);
    drop((first, from3, last, new_only, again, q));

    env.restart();
    let q = env.queue("events");
    assert_eq!(q.info().message_count, 6);
    let mut after = stream_consumer(&q, "after", Some(StreamOffset::First));
    assert_eq!(body(&next(&mut after).await.unwrap()), "0");
}

#[tokio::test]
async fn a_stream_queue_is_a_kafka_topic() {
    let env = Env::new();
    env.declare("orders", true, stream_args());
    publish_durably(&env, "", "orders", "from-amqp").await;
    let broker = env.broker.as_ref().unwrap();
    let log = broker.partition("orders", 0).unwrap();
    let read = log.read(0, 1 << 20, true).unwrap();
    let batches = ferry_log::records::split_batches(read.records).unwrap();
    let rec = ferry_log::records::decode_batch(batches[0].2.clone())
        .unwrap()
        .remove(0);
    assert_eq!(rec.key.as_deref(), Some(&b"orders"[..]));
    assert_eq!(rec.value.as_deref(), Some(&b"from-amqp"[..]));
    // What a Kafka producer writes, AMQP stream consumers read.
    let batch = ferry_log::records::build_batch(
        1,
        &[ferry_log::records::RecordParts {
            key: Some(b"k"),
            value: Some(b"from-kafka"),
            headers: &[],
        }],
    );
    let info = log.append(&batch).unwrap();
    log.wait_durable(&info).await.unwrap();
    let q = env.queue("orders");
    let mut c = stream_consumer(&q, "c", Some(StreamOffset::First));
    assert_eq!(body(&next(&mut c).await.unwrap()), "from-amqp");
    let d = next(&mut c).await.unwrap();
    assert_eq!(
        (body(&d), d.message.routing_key.as_str()),
        ("from-kafka".into(), "k")
    );
    drop(c);
    // Deleting the stream deletes the topic it made.
    env.m()
        .delete_queue("/", "orders", false, false, C1)
        .unwrap();
    assert!(broker.topic("orders").is_none());
    // A stream over a topic that already existed leaves the topic alone.
    broker
        .create_topic("existing", Some(1), &Default::default(), false)
        .unwrap();
    env.declare("existing", true, stream_args());
    env.m()
        .delete_queue("/", "existing", false, false, C1)
        .unwrap();
    assert!(broker.topic("existing").is_some());
}

mod priority_model {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Publish(u8),
        Get,
        Ack(usize),
        Requeue(usize),
        Restart { crash: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6).prop_map(Op::Publish),
            3 => Just(Op::Get),
            2 => any::<usize>().prop_map(Op::Ack),
            2 => any::<usize>().prop_map(Op::Requeue),
            1 => any::<bool>().prop_map(|crash| Op::Restart { crash }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// A priority queue (x-max-priority 3) delivers the highest
        /// (capped) priority first, oldest first within a priority, also
        /// after requeues and restarts, which rebuild its indexes.
        #[test]
        fn priority_queue_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut env = Env::new();
            let args = vec![arg("x-max-priority", FieldValue::Int(3))];
            env.declare("p", true, args);
            // (Reverse priority, id): the next to deliver first.
            let mut ready: BTreeSet<(std::cmp::Reverse<u8>, u64)> = BTreeSet::new();
            let mut in_flight: Vec<(u8, u64)> = Vec::new();
            let mut published = 0u64;
            for op in ops {
                let q = env.queue("p");
                match op {
                    Op::Publish(prio) => {
                        let mut m = msg("", "p", &published.to_string());
                        m.priority = prio;
                        env.m().publish("/", m).unwrap();
                        ready.insert((std::cmp::Reverse(prio.min(3)), published));
                        published += 1;
                    }
                    Op::Get => {
                        let got = q.get(false).unwrap();
                        match ready.pop_first() {
                            None => prop_assert!(got.is_none()),
                            Some((std::cmp::Reverse(p), id)) => {
                                let d = got.unwrap();
                                prop_assert_eq!(d.id, id);
                                in_flight.push((p, id));
                            }
                        }
                    }
                    Op::Ack(i) if !in_flight.is_empty() => {
                        let (_, id) = in_flight.remove(i % in_flight.len());
                        q.ack(id).unwrap();
                    }
                    Op::Requeue(i) if !in_flight.is_empty() => {
                        let (p, id) = in_flight.remove(i % in_flight.len());
                        q.reject(id, true).unwrap();
                        ready.insert((std::cmp::Reverse(p), id));
                    }
                    Op::Ack(_) | Op::Requeue(_) => {}
                    Op::Restart { crash } => {
                        drop(q);
                        if crash { env.crash() } else { env.restart() }
                        for (p, id) in in_flight.drain(..) {
                            ready.insert((std::cmp::Reverse(p), id));
                        }
                    }
                }
                prop_assert_eq!(env.queue("p").info().message_count, ready.len() as u64);
            }
        }
    }
}

#[tokio::test]
async fn confirms_wait_for_persistent_messages_to_durable_queues_only() {
    let env = Env::new();
    env.declare("durable", true, vec![]);
    env.declare("transient", false, vec![]);
    let p = env.m().publish("/", msg("", "durable", "x")).unwrap();
    assert!(!p.pending.is_empty());
    p.pending.durable().await.unwrap();
    let mut m = msg("", "durable", "y");
    m.persistent = false;
    assert!(env.m().publish("/", m).unwrap().pending.is_empty());
    let p = env.m().publish("/", msg("", "transient", "z")).unwrap();
    assert!(p.pending.is_empty());
    p.pending.durable().await.unwrap();
}

#[tokio::test]
async fn visibility_timeouts_and_delayed_sends_for_sqs() {
    let env = Env::new();
    env.declare("dlq", true, vec![]);
    env.declare(
        "sqs",
        true,
        dlx_args(vec![arg("x-delivery-limit", FieldValue::Int(1))]),
    );
    let q = env.queue("sqs");
    q.send(msg("", "ignored", "now"), None).unwrap();
    q.send(msg("", "ignored", "later"), Some(Duration::from_millis(80)))
        .unwrap();
    assert_eq!(q.info().message_count, 1);
    let d = q.receive(Duration::from_millis(30)).unwrap().unwrap();
    assert_eq!(body(&d), "now");
    assert!(q.receive(Duration::from_millis(30)).unwrap().is_none());
    // Not acked in time: back, counted as a failed delivery.
    tokio::time::sleep(Duration::from_millis(50)).await;
    env.m().run_timers_once();
    let again = q.receive(Duration::from_secs(60)).unwrap().unwrap();
    assert_eq!(
        (body(&again), again.delivery_count, again.redelivered),
        ("now".into(), 2, true)
    );
    // More time, then none: returned at once, and past the limit of 1 it is
    // dead-lettered instead.
    q.set_visibility(again.id, Duration::from_secs(120))
        .unwrap();
    q.set_visibility(again.id, Duration::ZERO).unwrap();
    assert_eq!(env.bodies("dlq"), ["now"]);
    assert!(q.set_visibility(again.id, Duration::ZERO).is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.m().run_timers_once();
    let later = q.receive(Duration::from_secs(1)).unwrap().unwrap();
    assert_eq!(body(&later), "later");
    q.ack(later.id).unwrap();
    assert_eq!(q.unsettled(), 0);
}

#[tokio::test]
async fn send_all_appends_a_batch_in_one_write_and_refuses_what_does_not_fit() {
    let env = Env::new();
    env.declare("sqs", true, vec![]);
    let q = env.queue("sqs");
    let batch = ["a", "b", "later", "c"].map(|b| {
        let delay = (b == "later").then_some(Duration::from_millis(50));
        (msg("", "sqs", b), delay)
    });
    let sent: Vec<Published> = q
        .send_all(batch.into())
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // One append for the four: each waits for the same write, which holds
    // four consecutive offsets.
    let infos: Vec<AppendInfo> = sent.iter().map(|p| p.pending.waits[0].1).collect();
    assert!(infos.iter().all(|i| *i == infos[0]));
    assert_eq!(infos[0].last_offset - infos[0].base_offset, 3);
    for p in sent {
        p.pending.durable().await.unwrap();
    }
    let got: Vec<String> = std::iter::from_fn(|| q.receive(Duration::from_secs(60)).unwrap())
        .map(|d| body(&d))
        .collect();
    assert_eq!(got, ["a", "b", "c"]);
    tokio::time::sleep(Duration::from_millis(80)).await;
    env.m().run_timers_once();
    assert_eq!(
        body(&q.receive(Duration::from_secs(60)).unwrap().unwrap()),
        "later"
    );

    // reject-publish-dlx takes what fits and dead-letters the rest.
    env.declare("dlq", false, vec![]);
    env.declare(
        "small",
        false,
        dlx_args(vec![
            arg("x-max-length", FieldValue::Int(2)),
            arg("x-overflow", s("reject-publish-dlx")),
        ]),
    );
    let results = env
        .queue("small")
        .send_all(
            ["1", "2", "3", "4"]
                .map(|b| (msg("", "small", b), None))
                .into(),
        )
        .unwrap();
    let refused: Vec<bool> = results.iter().map(Result::is_err).collect();
    assert_eq!(refused, [false, false, true, true]);
    assert_eq!(
        results[2].as_ref().unwrap_err(),
        &MessagingError::QueueFull("small".into())
    );
    assert_eq!(env.bodies("small"), ["1", "2"]);
    assert_eq!(env.bodies("dlq"), ["3", "4"]);
}

#[tokio::test]
async fn visibility_deadlines_survive_a_crash() {
    let mut env = Env::new();
    env.declare("sqs", true, vec![]);
    let q = env.queue("sqs");
    for b in ["hidden", "returned", "deleted", "ready"] {
        q.send(msg("", "sqs", b), None).unwrap();
    }
    let hidden = q.receive(Duration::from_millis(300)).unwrap().unwrap();
    let returned = q.receive(Duration::from_secs(60)).unwrap().unwrap();
    let deleted = q.receive(Duration::from_secs(60)).unwrap().unwrap();
    q.set_visibility(returned.id, Duration::ZERO).unwrap();
    q.ack(deleted.id).unwrap();
    drop(q);
    env.crash();
    let q = env.queue("sqs");
    // Still in flight, under the same id and count, until its deadline.
    assert_eq!(q.counts().in_flight, 1);
    assert_eq!(q.in_flight_count(hidden.id), Some(1));
    let again: Vec<Delivery> = q.in_flight_deliveries();
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["hidden"]);
    let got: Vec<String> = std::iter::from_fn(|| q.receive(Duration::from_secs(60)).unwrap())
        .map(|d| body(&d))
        .collect();
    assert_eq!(got, ["returned", "ready"]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    env.m().run_timers_once();
    let d = q.receive(Duration::from_secs(60)).unwrap().unwrap();
    assert_eq!((body(&d), d.delivery_count), ("hidden".to_string(), 2));
    // A clean restart keeps the new deadline too.
    drop(q);
    env.restart();
    let q = env.queue("sqs");
    assert_eq!(q.counts().in_flight, 3);
    assert_eq!(q.counts().ready, 0);
    q.ack(d.id).unwrap();
    assert_eq!(q.unsettled(), 2);
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Ready messages of a FIFO queue cost no memory: run with
/// `cargo test --release -p ferry-core ready_messages_stay_on_disk -- --ignored --nocapture`
/// (FERRY_MEMORY_TEST_MESSAGES sets the count; default 1 million).
#[test]
#[ignore = "slow: publishes a million messages"]
fn ready_messages_stay_on_disk() {
    let n: u64 = std::env::var("FERRY_MEMORY_TEST_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let env = Env::new();
    env.declare("big", true, vec![]);
    let payload = Bytes::from(vec![b'x'; 100]);
    let before = rss_bytes();
    let started = std::time::Instant::now();
    for _ in 0..n {
        let mut m = msg("", "big", "");
        m.body = payload.clone();
        env.m().publish("/", m).unwrap();
    }
    let publish_s = started.elapsed().as_secs_f64();
    let after = rss_bytes();
    let q = env.queue("big");
    assert_eq!(q.info().message_count, n);
    let started = std::time::Instant::now();
    let mut got = 0u64;
    while let Some(d) = q.get(false).unwrap() {
        q.ack(d.id).unwrap();
        got += 1;
    }
    let consume_s = started.elapsed().as_secs_f64();
    env.m().run_timers_once();
    println!(
        "{n} messages: rss +{} MiB after publishing ({:.0} msg/s publish, {:.0} msg/s get+ack), disk {} MiB after draining",
        (after.saturating_sub(before)) >> 20,
        n as f64 / publish_s,
        got as f64 / consume_s,
        q.disk_bytes() >> 20
    );
    assert_eq!(got, n);
    assert!(after.saturating_sub(before) < 64 << 20);
}

#[tokio::test]
async fn receive_batch_skips_what_the_filter_refuses_and_keeps_its_place() {
    let env = Env::new();
    env.declare("fifo", true, vec![]);
    let q = env.queue("fifo");
    for b in ["a1", "b1", "a2", "c1", "b2"] {
        q.send(msg("", "fifo", b), None).unwrap();
    }
    // Group "a" is busy: everything else, in order, up to the max.
    let got = q
        .receive_batch(Duration::from_secs(30), 2, 100, &mut |m| {
            !m.body.starts_with(b"a")
        })
        .unwrap();
    let bodies: Vec<String> = got.iter().map(body).collect();
    assert_eq!(bodies, ["b1", "c1"]);
    assert!(got.iter().all(|d| d.delivery_count == 1));
    assert_eq!(
        q.counts(),
        QueueCounts {
            ready: 3,
            in_flight: 2,
            delayed: 0
        }
    );
    assert_eq!(q.in_flight_count(got[0].id), Some(1));
    // The skipped ones were not delivered and come first, in log order.
    let rest = q
        .receive_batch(Duration::from_secs(30), 10, 100, &mut |_| true)
        .unwrap();
    let bodies: Vec<(String, u32)> = rest.iter().map(|d| (body(d), d.delivery_count)).collect();
    assert_eq!(
        bodies,
        [("a1".into(), 1), ("a2".into(), 1), ("b2".into(), 1)]
    );
    q.ack(got[0].id).unwrap();
    assert_eq!(q.in_flight_count(got[0].id), None);
    // The scan bound: nothing accepted within it, nothing taken.
    q.send(msg("", "fifo", "z"), None).unwrap();
    assert!(
        q.receive_batch(Duration::from_secs(30), 10, 1, &mut |_| false)
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.counts().ready, 1);
}

#[tokio::test]
async fn receivers_are_woken_when_messages_become_ready() {
    let env = Env::new();
    env.declare("poll", true, vec![]);
    let q = env.queue("poll");
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            loop {
                let notified = q.receivers().notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(d) = q.receive(Duration::from_secs(30)).unwrap() {
                    return body(&d);
                }
                notified.await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.send(msg("", "poll", "wake"), None).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "wake");
    // A delayed message coming due wakes them too (through the timer).
    q.send(msg("", "poll", "later"), Some(Duration::from_millis(30)))
        .unwrap();
    assert_eq!(q.counts().delayed, 1);
    let notified = q.receivers().notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    tokio::time::sleep(Duration::from_millis(40)).await;
    env.m().run_timers_once();
    tokio::time::timeout(Duration::from_secs(1), notified)
        .await
        .unwrap();
}

/// Flips a bit in the stored body `needle` of a stopped broker's data
/// directory, wherever its segment is: bits that rot at rest.
fn corrupt_stored_body(dir: &std::path::Path, needle: &[u8]) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                bytes[at] ^= 0x01;
                std::fs::write(&path, &bytes).unwrap();
                return;
            }
        }
    }
    panic!("no stored body {needle:?}");
}

/// A message whose stored batch fails its CRC is never delivered; the
/// queue opens, drops it (with an error logged) and delivers the rest, and
/// a stream consumer steps over it.
#[tokio::test]
async fn a_message_corrupted_at_rest_is_skipped_not_delivered() {
    // A priority queue rebuilds its indexes from the log when it opens.
    let priority = vec![arg("x-max-priority", FieldValue::Int(5))];
    for args in [vec![], priority, stream_args()] {
        let stream = args == stream_args();
        let mut env = Env::new();
        env.declare("q", true, args.clone());
        for i in 0..5 {
            publish_durably(&env, "", "q", &format!("body-{i}")).await;
        }
        env.broker.take().unwrap().shutdown();
        corrupt_stored_body(env.dir.path(), b"body-2");
        env.open();
        let q = env.queue("q");
        let got: Vec<String> = if !stream {
            std::iter::from_fn(|| q.get(true).unwrap())
                .map(|d| body(&d))
                .collect()
        } else {
            let mut c = stream_consumer(&q, "c", Some(StreamOffset::First));
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(body(&next(&mut c).await.unwrap()));
            }
            nothing_within(&mut c, 50).await;
            got
        };
        assert_eq!(got, ["body-0", "body-1", "body-3", "body-4"], "{args:?}");
    }
}

/// Every file of a directory, by name, with its bytes.
fn files_of(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// A durable queue whose log cannot be opened (a sealed segment whose first
/// batch claims 2^31 - 1 bytes, its offset index gone, so the open has to
/// walk it) does not stop the broker's start: the queue is held
/// unavailable, every use of its name is refused with the open error, its
/// files are kept as they are (not swept as an orphan, restart after
/// restart), and the other queues serve as usual.
#[tokio::test]
async fn a_queue_whose_log_cannot_be_opened_is_held_unavailable_and_the_broker_starts() {
    let mut env = Env::with_segments(512);
    env.declare("broken", true, vec![]);
    env.declare("fine", true, vec![]);
    for i in 0..10 {
        publish_durably(&env, "", "broken", &format!("broken-{i}")).await;
        publish_durably(&env, "", "fine", &format!("fine-{i}")).await;
    }
    let log_dir = env.queue("broken").inner.cfg.dir.join("log");
    env.broker.take().unwrap().shutdown();
    let first = log_dir.join("00000000000000000000.log");
    let segments = files_of(&log_dir)
        .keys()
        .filter(|n| n.ends_with(".log"))
        .count();
    assert!(segments > 1, "the first segment is sealed");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    std::fs::write(&first, &bytes).unwrap();
    std::fs::remove_file(first.with_extension("index")).unwrap();
    let before = files_of(&log_dir);

    for round in 0..2 {
        env.open();
        let refused = |result: Result<(), MessagingError>| match result {
            Err(MessagingError::Storage(m)) => {
                for needle in [
                    "queue 'broken' in vhost '/' is unavailable",
                    "00000000000000000000.log is corrupt at byte 0",
                ] {
                    assert!(m.contains(needle), "no {needle} in: {m}");
                }
            }
            other => panic!("expected the queue to be unavailable, got {other:?}"),
        };
        let m = env.m();
        refused(m.queue("/", "broken", C1).map(|_| ()));
        for passive in [true, false] {
            refused(
                m.declare_queue("/", queue_spec("broken", true, vec![]), passive, C1)
                    .map(|_| ()),
            );
        }
        refused(m.delete_queue("/", "broken", false, false, C1).map(|_| ()));
        refused(m.bind_queue("/", "broken", "amq.direct", "k", vec![], C1));
        // The first round takes them all.
        let expected: Vec<String> = (0..10)
            .filter(|_| round == 0)
            .map(|i| format!("fine-{i}"))
            .collect();
        assert_eq!(env.bodies("fine"), expected);
        env.broker.take().unwrap().shutdown();
        assert_eq!(files_of(&log_dir), before, "the queue's files changed");
    }
}

#[tokio::test]
async fn publish_all_writes_each_queue_once_in_order_and_answers_each_message() {
    let env = Env::new();
    env.exchange("fan", ExchangeKind::Fanout);
    env.declare("a", true, vec![]);
    env.declare("b", true, vec![]);
    env.bind("a", "fan", "");
    env.bind("b", "fan", "");
    env.declare(
        "small",
        true,
        vec![
            arg("x-max-length", FieldValue::Int(1)),
            arg("x-overflow", s("reject-publish")),
        ],
    );
    let published = env.m().publish_all(
        "/",
        vec![
            msg("fan", "", "1"),
            msg("", "a", "2"),
            msg("missing", "", "lost"),
            msg("", "nowhere", "unroutable"),
            msg("fan", "", "3"),
            msg("", "small", "s1"),
            msg("", "small", "s2"),
        ],
    );
    let routed: Vec<Result<usize, MessagingError>> = published
        .iter()
        .map(|r| r.as_ref().map(|p| p.routed).map_err(Clone::clone))
        .collect();
    assert_eq!(routed[..2], [Ok(2), Ok(1)]);
    assert!(matches!(routed[2], Err(MessagingError::NotFound { .. })));
    assert_eq!(
        routed[3..],
        [
            Ok(0),
            Ok(2),
            Ok(1),
            Err(MessagingError::QueueFull("small".into()))
        ]
    );
    // One write per queue: every message a queue took waits for the same
    // append, which holds as many consecutive offsets as it took messages.
    let mut writes: Vec<(Arc<Log>, Vec<AppendInfo>)> = Vec::new();
    for p in published.iter().flatten() {
        for (log, info) in &p.pending.waits {
            match writes.iter_mut().find(|(l, _)| Arc::ptr_eq(l, log)) {
                Some((_, infos)) => infos.push(*info),
                None => writes.push((log.clone(), vec![*info])),
            }
        }
    }
    let mut taken: Vec<usize> = writes
        .iter()
        .map(|(_, infos)| {
            assert!(infos.iter().all(|i| *i == infos[0]), "{infos:?}");
            assert_eq!(
                infos[0].last_offset - infos[0].base_offset + 1,
                infos.len() as i64
            );
            infos.len()
        })
        .collect();
    taken.sort_unstable();
    assert_eq!(taken, [1, 2, 3]);
    for p in published.into_iter().flatten() {
        p.pending.durable().await.unwrap();
    }
    assert_eq!(env.bodies("a"), ["1", "2", "3"]);
    assert_eq!(env.bodies("b"), ["1", "3"]);
    assert_eq!(env.bodies("small"), ["s1"]);
}
