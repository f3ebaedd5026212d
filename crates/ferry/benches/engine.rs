//! Criterion benchmarks of the storage engine's append and read paths and
//! of the Kafka codecs, so that a regression shows up as a number in review:
//! `cargo bench -p ferry --bench engine` (add `-- --save-baseline main` and
//! `-- --baseline main` to compare two checkouts). `.ci/run` only compiles
//! them (clippy --all-targets). They live in the `ferry` crate because it
//! depends on every other one.

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_log::batch::{BatchHeader, check_crc};
use ferry_log::records::{RecordParts, build_batch, decode_batch};
use ferry_log::{FsyncPolicy, Log, LogConfig, SystemClock};
use kafka_protocol::messages::{ProduceRequest, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

const RECORDS: usize = 100;
const VALUE: usize = 100;

/// A RecordBatch of RECORDS records of VALUE bytes, as a producer sends it.
fn batch() -> Vec<u8> {
    let value = vec![b'x'; VALUE];
    let records: Vec<RecordParts<'_>> = (0..RECORDS)
        .map(|_| RecordParts {
            key: None,
            value: Some(&value),
            headers: &[],
        })
        .collect();
    build_batch(1_700_000_000_000, &records)
}

fn open_log(dir: &std::path::Path) -> Log {
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    Log::open(dir, config, Arc::new(SystemClock)).expect("open log")
}

/// Appends without fsync: the cost of validation, offset assignment, the
/// write and the indexes (fsync cost is the disk's; see docs/benchmarks.md).
fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let b = batch();
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("append 100 x 100 B", |bench| {
        bench.iter(|| log.append(black_box(&b)).expect("append"))
    });
    g.finish();
}

/// Reads 1 MiB of whole batches from the page cache.
fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let b = batch();
    for _ in 0..2_000 {
        log.append(&b).expect("append");
    }
    let end = log.log_end_offset();
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut offset = 0;
    g.bench_function("read 1 MiB", |bench| {
        bench.iter(|| {
            let r = log.read(offset, 1 << 20, true).expect("read");
            offset = (offset + 10_000) % end;
            black_box(r)
        })
    });
    g.finish();
}

fn codecs(c: &mut Criterion) {
    let b = batch();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("RecordBatch header + CRC-32C, 100 records", |bench| {
        bench.iter(|| {
            let h = BatchHeader::parse(black_box(&b)).expect("header");
            check_crc(&h, &b).expect("crc")
        })
    });
    let stored = Bytes::from(b.clone());
    g.bench_function("RecordBatch decode, 100 records", |bench| {
        bench.iter_batched(
            || stored.clone(),
            |s| decode_batch(s).expect("decode"),
            BatchSize::SmallInput,
        )
    });

    // A Produce request (v9) carrying the batch, as the broker decodes it.
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = 30_000;
    let mut partition = kafka_protocol::messages::produce_request::PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(stored.clone());
    let mut topic = kafka_protocol::messages::produce_request::TopicProduceData::default();
    topic.name = kafka_protocol::messages::TopicName(
        kafka_protocol::protocol::StrBytes::from_static_str("bench"),
    );
    topic.partition_data.push(partition);
    request.topic_data.push(topic);
    let mut encoded = BytesMut::new();
    request.encode(&mut encoded, 9).expect("encode");
    let encoded = encoded.freeze();
    g.bench_function("ProduceRequest v9 decode, 100 records", |bench| {
        bench.iter_batched(
            || encoded.clone(),
            |mut e| ProduceRequest::decode(&mut e, 9).expect("decode"),
            BatchSize::SmallInput,
        )
    });
    let mut header = RequestHeader::default();
    header.request_api_key = 0;
    header.request_api_version = 9;
    header.correlation_id = 7;
    let mut h = BytesMut::new();
    header.encode(&mut h, 2).expect("encode");
    let h = h.freeze();
    g.bench_function("RequestHeader v2 decode", |bench| {
        bench.iter_batched(
            || h.clone(),
            |mut e| RequestHeader::decode(&mut e, 2).expect("decode"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, append, read, codecs);
criterion_main!(benches);
