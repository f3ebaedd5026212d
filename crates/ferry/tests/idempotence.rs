//! Idempotent producers over raw Kafka requests against the real binary:
//! InitProducerId, a resent batch answered with its original offset and
//! stored once, sequence gaps and fenced epochs refused, and all of it still
//! true after a clean restart and after SIGKILL.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;

use common::idempotent::{batch, init_producer_id, init_producer_id_with};
use common::{Client, Server, api};

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const INVALID_REQUEST: i16 = 42;
const INVALID_RECORD: i16 = 87;

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Every record value of the partition, in offset order, with its offset.
fn stored(client: &mut Client, topic: &str) -> Vec<(i64, String)> {
    api::read_all(client, topic, 0, 0)
        .into_iter()
        .map(|r| {
            let v = r.value.as_ref().unwrap();
            (r.offset, String::from_utf8(v.to_vec()).unwrap())
        })
        .collect()
}

#[test]
fn init_producer_id_gives_ids_never_seen_before_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut seen = HashSet::new();
    let mut take = |server: &Server, n: usize| {
        let mut c = server.client();
        for i in 0..n {
            // Every version Kafka 3.7 offers.
            let (err, id, epoch) = init_producer_id_with(&mut c, (i % 5) as i16, None, None);
            assert_eq!((err, epoch), (0, 0));
            assert!(id >= 0);
            assert!(seen.insert(id), "producer id {id} handed out twice");
        }
    };
    take(&server, 10);

    let mut c = server.client();
    let (id, _) = init_producer_id(&mut c);
    // An epoch bump request (v3+, KIP-360) gets a fresh id, as Kafka answers
    // a producer without a transactional id.
    let (err, bumped, epoch) = init_producer_id_with(&mut c, 4, None, Some((id, 0)));
    assert_eq!((err, epoch), (0, 0));
    assert!(bumped != id);
    // The id and epoch come together or not at all.
    let (err, ..) = init_producer_id_with(&mut c, 3, None, Some((id, -1)));
    assert_eq!(err, INVALID_REQUEST);
    // Transactions are not supported yet: the coordinator is "unavailable".
    for v in 0..=4 {
        let (err, id, epoch) = init_producer_id_with(&mut c, v, Some("txn-1"), None);
        assert_eq!((err, id, epoch), (COORDINATOR_NOT_AVAILABLE, -1, -1));
    }

    assert!(server.terminate().success());
    let server = Server::start(dir.path(), &[]);
    take(&server, 10);
    let mut server = server;
    server.kill9();
    let server = Server::start(dir.path(), &[]);
    take(&server, 10);
    assert!(server.log_text().contains("kafka listening"));
}

#[test]
fn a_resent_batch_gets_its_original_offset_and_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client();
    assert_eq!(api::create_topic(&mut c, "idem", 1, &[]), 0);
    let (id, epoch) = init_producer_id(&mut c);

    let first = batch(id, epoch, 0, &values("a", 3));
    assert_eq!(api::produce(&mut c, "idem", 0, first.clone()), (0, 0));
    // Someone else writes in between.
    let plain = common::encode_batch(
        &[common::record(None, "plain", common::now_ms())],
        kafka_protocol::records::Compression::None,
    );
    assert_eq!(api::produce(&mut server.client(), "idem", 0, plain), (0, 3));
    // The retry, on a new connection as after a timeout.
    assert_eq!(api::produce(&mut server.client(), "idem", 0, first), (0, 0));
    let second = batch(id, epoch, 3, &values("b", 2));
    assert_eq!(api::produce(&mut c, "idem", 0, second.clone()), (0, 4));
    assert_eq!(api::produce(&mut c, "idem", 0, second), (0, 4));

    let got: Vec<String> = stored(&mut c, "idem").into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, ["a-0", "a-1", "a-2", "plain", "b-0", "b-1"]);
}

#[test]
fn sequence_gaps_and_old_epochs_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client();
    assert_eq!(api::create_topic(&mut c, "idem", 1, &[]), 0);
    let (id, _) = init_producer_id(&mut c);

    assert_eq!(
        api::produce(&mut c, "idem", 0, batch(id, 0, 0, &values("e0", 2))),
        (0, 0)
    );
    // A gap: sequence 2 was expected.
    let (err, offset) = api::produce(&mut c, "idem", 0, batch(id, 0, 5, &values("gap", 1)));
    assert_eq!((err, offset), (OUT_OF_ORDER_SEQUENCE_NUMBER, -1));
    // A batch already overtaken but not among the remembered ones.
    let (err, _) = api::produce(&mut c, "idem", 0, batch(id, 0, 1, &values("old", 1)));
    assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER);
    // A new epoch must start at sequence 0 ...
    let (err, _) = api::produce(&mut c, "idem", 0, batch(id, 1, 2, &values("e1", 1)));
    assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER);
    // ... and then fences the old one.
    assert_eq!(
        api::produce(&mut c, "idem", 0, batch(id, 1, 0, &values("e1", 1))),
        (0, 2)
    );
    let (err, offset) = api::produce(&mut c, "idem", 0, batch(id, 0, 2, &values("zombie", 1)));
    assert_eq!((err, offset), (INVALID_PRODUCER_EPOCH, -1));
    // A producer id without a sequence number is not a valid batch.
    let (err, _) = api::produce(&mut c, "idem", 0, batch(id, 1, -1, &values("noseq", 1)));
    assert_eq!(err, INVALID_RECORD);

    let got: Vec<String> = stored(&mut c, "idem").into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, ["e0-0", "e0-1", "e1-0"]);
}

/// Produces `n` batches of 5 records from producer `id` starting at
/// sequence `seq`; returns each batch with its acknowledged base offset.
fn produce_batches(
    c: &mut Client,
    id: i64,
    seq: &mut i32,
    n: usize,
    tag: &str,
) -> Vec<(bytes::Bytes, i64)> {
    (0..n)
        .map(|i| {
            let b = batch(id, 0, *seq, &values(&format!("{tag}{i}"), 5));
            *seq += 5;
            let (err, offset) = api::produce(c, "idem", 0, b.clone());
            assert_eq!(err, 0);
            (b, offset)
        })
        .collect()
}

#[test]
fn duplicates_are_still_recognised_after_a_restart_and_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: the producer state is rebuilt from a snapshot taken at
    // a segment roll plus the batches after it.
    let args = ["--topic-default", "segment.bytes=16384"];
    let mut server = Server::start(dir.path(), &args);
    let mut c = server.client();
    assert_eq!(api::create_topic(&mut c, "idem", 1, &[]), 0);
    let (id, _) = init_producer_id(&mut c);
    let mut seq = 0;
    let mut expected = 0usize;

    for (round, kill) in [("clean", false), ("kill", true), ("kill-again", true)] {
        let sent = produce_batches(&mut c, id, &mut seq, 150, round);
        expected += 150 * 5;
        if kill {
            server.kill9();
        } else {
            assert!(server.terminate().success());
        }
        server = Server::start(dir.path(), &args);
        c = server.client();
        // The last five batches are remembered; resending any of them is
        // answered with its original offset and writes nothing.
        let end = api::fetch(&mut c, "idem", 0, 0, 1, 0).1;
        for (b, offset) in sent.iter().rev().take(5) {
            assert_eq!(
                api::produce(&mut c, "idem", 0, b.clone()),
                (0, *offset),
                "{round}: resent batch"
            );
        }
        assert_eq!(
            api::fetch(&mut c, "idem", 0, 0, 1, 0).1,
            end,
            "{round}: nothing written"
        );
        // An older one is out of order, not stored again.
        let (err, _) = api::produce(&mut c, "idem", 0, sent[0].0.clone());
        assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER, "{round}");
        // The producer carries on in sequence.
        let (b, offset) = &produce_batches(&mut c, id, &mut seq, 1, &format!("{round}-after"))[0];
        assert_eq!(*offset, end);
        expected += 5;
        assert_eq!(api::produce(&mut c, "idem", 0, b.clone()), (0, end));
        // A gap is still a gap.
        let (err, _) = api::produce(&mut c, "idem", 0, batch(id, 0, seq + 1, &values("gap", 1)));
        assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER, "{round}");
    }

    let got = stored(&mut c, "idem");
    assert_eq!(got.len(), expected, "every record exactly once");
    let unique: HashSet<&String> = got.iter().map(|(_, v)| v).collect();
    assert_eq!(unique.len(), expected);
    assert!(got.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
    let segments = std::fs::read_dir(dir.path().join("topics/idem/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(
        segments > 3,
        "the test crossed segment rolls ({segments} segments)"
    );
}
