//! Crash safety: producers with acks=all keep writing while the server is
//! killed with SIGKILL and restarted, several times. Afterwards every
//! acknowledged record is present exactly once at the offset it was
//! acknowledged with, offsets are contiguous, and every batch read back has a
//! valid CRC.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api;
use common::{Client, Server, encode_batch, now_ms, record};
use kafka_protocol::records::Compression;

const PARTITIONS: i32 = 3;
const PRODUCERS: usize = 4;
const KILLS: usize = 5;
const RECORDS_PER_BATCH: usize = 20;

/// (partition, offset) → value of every acknowledged record.
type Acked = Arc<Mutex<HashMap<(i32, i64), String>>>;

fn producer(id: usize, addr: std::net::SocketAddr, stop: Arc<AtomicBool>, acked: Acked) {
    let mut seq = 0u64;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = Client::try_connect(addr).ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        let partition = (seq % PARTITIONS as u64) as i32;
        // Every attempt writes fresh values: an unacknowledged batch is never
        // retried, so each acknowledged value must appear exactly once.
        let values: Vec<String> = (0..RECORDS_PER_BATCH)
            .map(|i| format!("p{id}-s{seq}-r{i}"))
            .collect();
        seq += 1;
        let records: Vec<_> = values
            .iter()
            .map(|v| record(Some(&format!("k{id}")), v, now_ms()))
            .collect();
        match api::try_produce(
            c,
            "crash",
            partition,
            encode_batch(&records, Compression::None),
        ) {
            Ok((0, base)) => {
                let mut a = acked.lock().unwrap();
                for (i, v) in values.into_iter().enumerate() {
                    assert!(
                        a.insert((partition, base + i as i64), v).is_none(),
                        "offset {base}+{i} of partition {partition} acknowledged twice"
                    );
                }
            }
            Ok((err, _)) => panic!("produce failed with error {err}"),
            Err(_) => client = None,
        }
    }
}

#[test]
fn acknowledged_records_survive_repeated_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // A small segment size makes the test cross segment rolls too.
    let args = ["--topic-default", "segment.bytes=65536"];
    let mut server = Server::start(dir.path(), &args);
    let listen = server.kafka.to_string();
    assert_eq!(
        api::create_topic(&mut server.client(), "crash", PARTITIONS, &[]),
        0
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let (stop, acked, addr) = (stop.clone(), acked.clone(), server.kafka);
            std::thread::spawn(move || producer(id, addr, stop, acked))
        })
        .collect();

    for round in 0..KILLS {
        std::thread::sleep(Duration::from_millis(400 + 150 * round as u64));
        let before = acked.lock().unwrap().len();
        server.kill9();
        server = Server::start_at(dir.path(), &listen, &args);
        assert!(
            before > 0 || round > 0,
            "nothing was acknowledged before the first kill"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().expect("producer thread panicked");
    }

    let acked = acked.lock().unwrap();
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    let mut c = server.client();
    let mut seen_values = HashMap::new();
    for partition in 0..PARTITIONS {
        let records = api::read_all(&mut c, "crash", partition, 0);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.offset, i as i64,
                "offsets of partition {partition} are not contiguous"
            );
            let value = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
            assert!(
                seen_values
                    .insert(value.clone(), (partition, r.offset))
                    .is_none(),
                "value {value} stored twice"
            );
        }
        for ((p, offset), value) in acked.iter().filter(|((p, _), _)| *p == partition) {
            let r = records.get(*offset as usize).unwrap_or_else(|| {
                panic!("acknowledged offset {offset} of partition {p} is missing")
            });
            assert_eq!(
                r.value.as_deref(),
                Some(value.as_bytes()),
                "partition {p} offset {offset} holds another record"
            );
        }
    }
    let _ = server.terminate();
}
