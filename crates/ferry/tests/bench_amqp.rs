//! `ferry bench amqp` end to end against a real `ferry serve`: the counts in
//! its JSON summary add up, so the benchmark tool does not rot.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;

fn bench(url: &str, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "amqp", "--url", url, "--json", "--quiet"])
        .args(["--idle-timeout", "20s"])
        .args(args)
        .output()
        .expect("run ferry bench amqp");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (out.status.success(), summary, stderr)
}

#[test]
fn publishes_consumes_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    // Free ports for every listener (the harness picks Kafka's and AMQP's).
    let server = Server::start(dir.path(), &["--sqs-listen", "127.0.0.1:0"]);
    let url = format!("amqp://guest:guest@{}/%2f", server.amqp());

    // The benchmark's workload: persistent messages, confirms, manual acks.
    let (ok, s, stderr) = bench(
        &url,
        &[
            "--count",
            "2000",
            "--persistent",
            "--confirm",
            "--manual-ack",
            "--prefetch",
            "100",
        ],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["complete"], true);
    assert_eq!(s["published"]["messages"], 2000);
    assert_eq!(s["published"]["confirmed"], 2000);
    assert_eq!(s["published"]["nacked"], 0);
    assert_eq!(s["consumed"]["messages"], 2000);
    assert_eq!(s["consumed"]["bytes"], 200_000);
    assert_eq!(s["latency"]["samples"], 2000);
    let p50 = s["latency"]["p50_ms"].as_f64().unwrap();
    let max = s["latency"]["max_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "{s:#}");

    // A backlog over 2 queues from 2 producers, then drained by another run.
    let (ok, s, stderr) = bench(
        &url,
        &[
            "--publish-only",
            "--queues",
            "2",
            "--count",
            "1001",
            "--persistent",
            "--confirm",
            "50",
            "--broker-pid",
            &server.pid().to_string(),
        ],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["published"]["confirmed"], 1001);
    assert!(s.get("consumed").is_none(), "{s:#}");
    assert!(s["broker"]["rss_mb_end"].as_f64().unwrap() > 0.0, "{s:#}");

    let (ok, s, stderr) = bench(
        &url,
        &[
            "--consume-only",
            "--queues",
            "2",
            "--manual-ack",
            "--multi-ack",
            "10",
        ],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["config"]["backlog_at_start"], 1001);
    assert_eq!(s["consumed"]["messages"], 1001);
    assert_eq!(s["latency"]["samples"], 1001);
    assert!(s.get("published").is_none(), "{s:#}");

    // Fan-out: one producer, a fanout exchange bound to three queues, each
    // message delivered three times; and a plot of the run.
    let plot = dir.path().join("fanout.svg");
    let (ok, s, stderr) = bench(
        &url,
        &[
            "--fanout",
            "--queues",
            "3",
            "--queue-prefix",
            "fan",
            "--count",
            "300",
            "--persistent",
            "--confirm",
            "--manual-ack",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["config"]["producers"], 1);
    assert_eq!(s["published"]["confirmed"], 300);
    assert_eq!(s["consumed"]["messages"], 900);
    assert_eq!(s["latency"]["samples"], 900);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<polyline") && svg.contains("consumed"),
        "{svg}"
    );
}
