//! `ferry bench sqs` end to end against a real `ferry serve`: the counts in
//! its JSON summary add up, so the benchmark tool does not rot. Timings are
//! not checked.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

fn bench(endpoint: &str, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "sqs", "--endpoint", endpoint, "--json", "--quiet"])
        .args(["--idle-timeout", "20s"])
        .args(args)
        .output()
        .expect("run ferry bench sqs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (out.status.success(), summary, stderr)
}

/// The SQS listener's address, from the `sqs listening on` log line.
fn sqs_endpoint(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = server.log_text();
        if let Some(addr) = log
            .lines()
            .find_map(|l| l.split("sqs listening on ").nth(1))
        {
            // Drop any colour codes after the address.
            let addr: String = addr
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return format!("http://{addr}");
        }
        assert!(
            Instant::now() < deadline,
            "no 'sqs listening on' line in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sends_receives_deletes_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sqs-listen", "127.0.0.1:0"]);
    let endpoint = sqs_endpoint(&server);

    // Standard queues: 2 queues, 3 producers, 2 consumers per queue, an
    // uneven count so that the last batches are short.
    let (ok, s, stderr) = bench(
        &endpoint,
        &[
            "--count",
            "2003",
            "--queues",
            "2",
            "--producers",
            "3",
            "--consumers",
            "2",
            "--broker-pid",
            &server.pid().to_string(),
        ],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["protocol"], "sqs");
    assert_eq!(s["complete"], true);
    assert_eq!(s["published"]["messages"], 2003);
    assert_eq!(s["consumed"]["messages"], 2003);
    assert_eq!(s["deleted"]["messages"], 2003);
    assert_eq!(s["deleted"]["bytes"], 200_300);
    assert_eq!(s["latency"]["samples"], 2003);
    // 3 producers, 10 per batch: 668 + 668 + 667 messages = 67 + 67 + 67 requests.
    assert_eq!(s["requests"]["send"]["requests"], 201);
    let deletes = s["requests"]["delete"]["requests"].as_u64().unwrap();
    assert!((201..=2003).contains(&deletes), "{s:#}");
    let p50 = s["latency"]["p50_ms"].as_f64().unwrap();
    let max = s["latency"]["max_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "{s:#}");
    assert!(s["broker"]["rss_mb_end"].as_f64().unwrap() > 0.0, "{s:#}");

    // FIFO, batches of 4, many groups; the queue is created the first time.
    let (ok, s, stderr) = bench(
        &endpoint,
        &["--fifo", "--groups", "20", "--count", "500", "--batch", "4"],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["config"]["fifo"], true);
    assert!(
        s["config"]["queue_urls"][0]
            .as_str()
            .unwrap()
            .ends_with("ferry-bench-0.fifo"),
        "{s:#}"
    );
    assert_eq!(s["published"]["messages"], 500);
    assert_eq!(s["deleted"]["messages"], 500);
    // 4 producers (the default) of 125 messages: 32 batches each, the last of 1.
    assert_eq!(s["requests"]["send"]["requests"], 128);

    // Long-poll wake-ups: every sample was a receive woken by a send.
    let (ok, s, stderr) = bench(
        &endpoint,
        &["--long-poll", "--count", "20", "--long-poll-gap", "5ms"],
    );
    assert!(ok, "{s:#}\n{stderr}");
    assert_eq!(s["long_poll"]["samples"], 20);
    assert_eq!(s["long_poll"]["wake"]["samples"], 20);
    assert_eq!(s["long_poll"]["send_round_trip"]["samples"], 20);
    assert_eq!(s["long_poll"]["empty_receives"], 0);
    assert!(s.get("published").is_none(), "{s:#}");
}
