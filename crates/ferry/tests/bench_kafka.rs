//! `ferry bench kafka` end to end against a real `ferry serve`: the counts in
//! its JSON summary add up, so the benchmark tool does not rot. Timings are
//! not checked (performance lives in docs/benchmarks.md).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;

fn bench(broker: &str, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "kafka", "--brokers", broker, "--json", "--quiet"])
        .args(["--idle-timeout", "20s"])
        .args(args)
        .output()
        .expect("run ferry bench kafka");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (out.status.success(), summary, stderr)
}

#[test]
fn produces_consumes_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let broker = server.kafka.to_string();

    // Three partitions from two producers, acks=all, a window smaller than
    // the count so that the producers wait for answers; and a plot.
    let plot = dir.path().join("run.svg");
    let (ok, s, stderr) = bench(
        &broker,
        &[
            "--queues",
            "3",
            "--producers",
            "2",
            "--count",
            "3001",
            "--window",
            "200",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["protocol"], "kafka");
    assert_eq!(s["complete"], true);
    assert_eq!(s["published"]["confirmed"], 3001);
    assert_eq!(s["consumed"]["messages"], 3001);
    assert_eq!(s["consumed"]["bytes"], 300_100);
    assert_eq!(s["latency"]["samples"], 3001);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<polyline") && svg.contains("end-to-end latency"));

    // The topic holds what was produced, every value a distinct record of
    // this run (24-byte header: run id, sequence, timestamp).
    let mut client = server.client();
    let mut sequences = std::collections::BTreeSet::new();
    for p in 0..3 {
        for r in common::api::read_all(&mut client, "ferry-bench-3", p, 0) {
            let v = r.value.unwrap();
            assert_eq!(v.len(), 100);
            sequences.insert(v[8..16].to_vec());
        }
    }
    assert_eq!(sequences.len(), 3001);

    // A backlog from one run, read by another from the earliest offsets.
    let (ok, s, stderr) = bench(
        &broker,
        &["--queues", "2", "--publish-only", "--count", "1000"],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["published"]["confirmed"], 1000);
    let (ok, s, stderr) = bench(&broker, &["--queues", "2", "--consume-only"]);
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["config"]["backlog_at_start"], 1000);
    assert_eq!(s["consumed"]["messages"], 1000);

    // A usage error is refused with a message (and no summary), not a hang.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "kafka", "--brokers", &broker, "--consumers", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("one consumer"), "{stderr}");
}
