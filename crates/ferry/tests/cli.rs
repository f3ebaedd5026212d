//! The operator CLI (`ferry topic|produce|consume|group`), run as a user
//! would: the real binary against a real `ferry serve`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, now_ms};
use serde_json::{Value, json};

/// What one CLI run left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn command(brokers: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args)
        .env("FERRY_BROKERS", brokers)
        .env("FERRY_TIMEOUT_MS", "10000")
        .env_remove("FERRY_LOG");
    cmd
}

/// Runs `ferry ARGS` against `brokers` with `stdin`.
fn ferry_at(brokers: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = command(brokers, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = wait_timeout(child, Duration::from_secs(30));
    writer.join().unwrap();
    out
}

fn wait_timeout(mut child: Child, limit: Duration) -> Run {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn ferry(server: &Server, args: &[&str], stdin: &str) -> Run {
    ferry_at(&server.kafka.to_string(), args, stdin)
}

/// Runs and expects exit 0; returns stdout.
fn ok(server: &Server, args: &[&str]) -> String {
    ok_in(server, args, "")
}

fn ok_in(server: &Server, args: &[&str], stdin: &str) -> String {
    let run = ferry(server, args, stdin);
    assert_eq!(run.code, 0, "ferry {args:?} failed: {run:?}");
    run.stdout
}

fn json_of(server: &Server, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(server, &args)).unwrap()
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--group-initial-rebalance-delay-ms", "0"]);
    (dir, server)
}

fn cat<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = s.lines().collect();
    lines.sort_unstable();
    lines
}

#[allow(unsafe_code)]
fn interrupt(child: &Child) {
    // SAFETY: sending SIGINT to our own child process by pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
}

/// Polls `ferry group describe GROUP --json` until `done` holds.
fn describe_until(server: &Server, group: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = ferry(server, &["group", "describe", group, "--json"], "");
        if run.code == 0 {
            let v: Value = serde_json::from_str(&run.stdout).unwrap();
            if done(&v[0]) {
                return v[0].clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "group {group} never got there: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn help_and_usage_errors() {
    let run = ferry_at("127.0.0.1:9", &["--help"], "");
    assert_eq!(run.code, 0);
    for cmd in ["serve", "topic", "produce", "consume", "group"] {
        assert!(run.stdout.contains(&format!("  {cmd} ")), "{}", run.stdout);
    }
    let run = ferry_at("127.0.0.1:9", &["consume", "--help"], "");
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("FORMAT placeholders"), "{}", run.stdout);
    assert!(run.stdout.contains("@1700000000000"), "{}", run.stdout);
    assert!(
        run.stdout.contains("Exit codes: 0 success"),
        "{}",
        run.stdout
    );
    for sub in [
        vec!["topic", "create", "--help"],
        vec!["topic", "alter-config", "--help"],
        vec!["produce", "--help"],
        vec!["group", "reset-offsets", "--help"],
    ] {
        let run = ferry_at("127.0.0.1:9", &sub, "");
        assert_eq!(run.code, 0, "{sub:?}");
        assert!(
            run.stdout.contains("--brokers <HOST:PORT>"),
            "{sub:?}: {}",
            run.stdout
        );
    }

    // Usage errors exit 1 (2 is "broker unreachable"), before connecting.
    let run = ferry_at("127.0.0.1:9", &["topic", "create"], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("<NAME>..."), "{}", run.stderr);
    let run = ferry_at("127.0.0.1:9", &["topic", "alter-config", "t"], "");
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "ferry: alter-config needs at least one --set KEY=VALUE or --delete KEY\n"
        )
    );
    let run = ferry_at("127.0.0.1:9", &["consume", "t", "--from", "soon"], "");
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "ferry: --from \"soon\": expected beginning, end, an offset, or a time \
             (2026-11-28T10:00:00Z, -10m, @1700000000000)\n"
        )
    );
    let run = ferry_at("127.0.0.1:9", &["consume", "t", "--format", "%q"], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("unknown placeholder %q"),
        "{}",
        run.stderr
    );
    // `serve` keeps clap's own exit code for usage errors.
    let run = ferry_at("127.0.0.1:9", &["serve", "--no-such-flag"], "");
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn an_unreachable_broker_exits_2_and_says_what_to_do() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["topic", "list"],
        vec!["consume", "t"],
        vec!["group", "list"],
    ] {
        let run = ferry_at(&addr, &args, "");
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert_eq!(run.stdout, "");
        assert_eq!(
            run.stderr,
            format!(
                "ferry: cannot reach broker at {addr}: connection refused\n\
                 hint: is `ferry serve` running there? Point the CLI at a broker with \
                 --brokers HOST:PORT or FERRY_BROKERS\n"
            )
        );
    }
    // --brokers beats FERRY_BROKERS.
    let run = ferry_at("127.0.0.1:9", &["topic", "list", "--brokers", &addr], "");
    assert!(run.stderr.contains(&addr), "{run:?}");
}

#[test]
fn topic_create_list_describe_alter_delete() {
    let (_dir, server) = start();
    assert_eq!(
        ok(
            &server,
            &[
                "topic",
                "create",
                "orders",
                "-p",
                "3",
                "-c",
                "retention.ms=86400000"
            ]
        ),
        "TOPIC   PARTITIONS  REPLICATION-FACTOR  STATUS\n\
         orders  3           1                   created\n"
    );
    assert_eq!(
        ok(
            &server,
            &["topic", "create", "logs", "metrics", "--partitions", "1"]
        ),
        "TOPIC    PARTITIONS  REPLICATION-FACTOR  STATUS\n\
         logs     1           1                   created\n\
         metrics  1           1                   created\n"
    );
    assert_eq!(
        ok(&server, &["topic", "create", "ghost", "--dry-run"]),
        "TOPIC  PARTITIONS  REPLICATION-FACTOR  STATUS\n\
         ghost  1           1                   valid (dry run)\n"
    );
    assert_eq!(
        ok(&server, &["topic", "list"]),
        "NAME     PARTITIONS  REPLICAS\n\
         logs     1           1\n\
         metrics  1           1\n\
         orders   3           1\n"
    );
    let list = json_of(&server, &["topic", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(list[2]["name"], "orders");
    assert_eq!(list[2]["partitions"], 3);
    assert_eq!(list[2]["internal"], false);

    ok_in(&server, &["produce", "orders", "-p", "1"], "a\nb\n");
    let text = ok(&server, &["topic", "describe", "orders"]);
    let (head, configs) = text.split_once("\nCONFIGS\n").unwrap();
    assert_eq!(
        head,
        "NAME        orders\n\
         PARTITIONS  3\n\
         REPLICAS    1\n\
         \n\
         PARTITIONS\n\
         PARTITION  LEADER  REPLICAS  IN-SYNC  LOG-START-OFFSET  HIGH-WATERMARK\n\
         0          0       0         0        0                 0\n\
         1          0       0         0        0                 2\n\
         2          0       0         0        0                 0\n"
    );
    let rows: Vec<Vec<&str>> = configs
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["KEY", "VALUE", "SOURCE"]);
    assert!(rows.contains(&vec!["retention.ms", "86400000", "DYNAMIC_TOPIC_CONFIG"]));
    assert!(rows.contains(&vec!["cleanup.policy", "delete", "DEFAULT_CONFIG"]));

    assert_eq!(
        ok(
            &server,
            &[
                "topic",
                "alter-config",
                "orders",
                "--set",
                "retention.ms=3600000",
                "--set",
                "segment.bytes=1048576",
                "--delete",
                "cleanup.policy"
            ]
        ),
        "KEY             CHANGE   VALUE\n\
         retention.ms    set      3600000\n\
         segment.bytes   set      1048576\n\
         cleanup.policy  deleted\n"
    );
    let described = json_of(&server, &["topic", "describe", "orders"]);
    let config = |name: &str| {
        described["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(config("retention.ms")["value"], "3600000");
    assert_eq!(config("retention.ms")["source"], "DYNAMIC_TOPIC_CONFIG");
    assert_eq!(config("segment.bytes")["value"], "1048576");
    assert_eq!(config("cleanup.policy")["source"], "DEFAULT_CONFIG");
    assert_eq!(
        described["partitions"][1],
        json!({"partition": 1, "leader": 0, "replicas": [0], "isr": [0],
               "log_start_offset": 0, "high_watermark": 2})
    );

    // Removing an override brings the default back.
    ok(
        &server,
        &[
            "topic",
            "alter-config",
            "orders",
            "--delete",
            "retention.ms",
        ],
    );
    let described = json_of(&server, &["topic", "describe", "orders"]);
    let retention = described["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .unwrap();
    assert_eq!(retention["source"], "DEFAULT_CONFIG");

    assert_eq!(
        ok(&server, &["topic", "delete", "logs", "metrics"]),
        "TOPIC    STATUS\nlogs     deleted\nmetrics  deleted\n"
    );
    assert_eq!(
        ok(&server, &["topic", "list"]),
        "NAME    PARTITIONS  REPLICAS\norders  3           1\n"
    );
}

#[test]
fn topic_errors_exit_3_with_the_kafka_error_and_a_hint() {
    let (_dir, server) = start();
    ok(&server, &["topic", "create", "orders"]);

    let run = ferry(&server, &["topic", "create", "orders"], "");
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "ferry: cannot create topic \"orders\": TOPIC_ALREADY_EXISTS: topic 'orders' already exists\n\
         hint: `ferry topic describe orders` shows it; to recreate it, delete it first with \
         `ferry topic delete orders`\n"
    );
    let run = ferry(&server, &["topic", "create", "orders", "--json"], "");
    assert_eq!(run.code, 3, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v[0]["created"], false);
    assert_eq!(v[0]["error"]["code"], 36);
    assert_eq!(v[0]["error"]["name"], "TOPIC_ALREADY_EXISTS");

    let run = ferry(&server, &["topic", "create", "bad name"], "");
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .starts_with("ferry: cannot create topic \"bad name\": INVALID_TOPIC_EXCEPTION: "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with(
            "\nhint: topic names are 1-249 characters of letters, digits, '.', '_' and '-', \
             and not '.' or '..'\n"
        ),
        "{}",
        run.stderr
    );

    let run = ferry(&server, &["topic", "create", "zero", "-p", "0"], "");
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("INVALID_PARTITIONS"), "{}", run.stderr);
    assert!(
        run.stderr.contains("hint: give a partition count"),
        "{}",
        run.stderr
    );

    let run = ferry(
        &server,
        &["topic", "alter-config", "orders", "--set", "nope=1"],
        "",
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .starts_with("ferry: cannot alter the configs of topic \"orders\": INVALID_CONFIG"),
        "{}",
        run.stderr
    );

    let run = ferry(&server, &["topic", "delete", "missing"], "");
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .starts_with("ferry: cannot delete topic \"missing\": UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        run.stderr
    );

    for args in [
        vec!["topic", "describe", "missing"],
        vec!["consume", "missing"],
    ] {
        let run = ferry(&server, &args, "");
        assert_eq!(run.code, 3, "{args:?}: {run:?}");
        assert_eq!(
            run.stderr,
            "ferry: cannot use topic \"missing\": UNKNOWN_TOPIC_OR_PARTITION\n\
             hint: create it with `ferry topic create missing` (`ferry topic list` shows the topics that exist)\n"
        );
    }
    let run = ferry(&server, &["produce", "orders", "--partition", "7"], "x\n");
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr,
        "ferry: cannot produce to orders/7: UNKNOWN_TOPIC_OR_PARTITION: topic \"orders\" has partitions 0-0\n\
         hint: pick an existing partition, or leave out --partition\n"
    );
}

#[test]
fn produce_then_consume_with_keys_headers_partitions_and_formats() {
    let (_dir, server) = start();
    ok(&server, &["topic", "create", "t", "-p", "2"]);

    let run = ferry(
        &server,
        &[
            "produce", "t", "-p", "1", "-k", ":", "-H", "src=test", "-H", "n=1",
        ],
        "k1:v1\nk2:v:2\nnokey\n",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "produced 3 records to t\n\
         PARTITION  RECORDS  FIRST-OFFSET  LAST-OFFSET\n\
         1          3        0             2\n"
    );
    let before_second = now_ms();
    std::thread::sleep(Duration::from_millis(20));

    // Without a key or --partition, records go round-robin; --json prints
    // each acknowledged record.
    let run = ferry(
        &server,
        &["produce", "t", "--json", "--compression", "gzip"],
        "a\nb\nc\n",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "{\"offset\":0,\"partition\":0,\"topic\":\"t\"}\n\
         {\"offset\":3,\"partition\":1,\"topic\":\"t\"}\n\
         {\"offset\":1,\"partition\":0,\"topic\":\"t\"}\n"
    );
    assert_eq!(
        run.stderr,
        "produced 3 records to t\n\
         PARTITION  RECORDS  FIRST-OFFSET  LAST-OFFSET\n\
         0          2        0             1\n\
         1          1        3             3\n"
    );

    // Default format: the value, one per line.
    let all = ok(
        &server,
        &["consume", "t", "--from", "beginning", "--exit-at-end"],
    );
    assert_eq!(sorted_lines(&all), ["a", "b", "c", "nokey", "v1", "v:2"]);

    let formatted = ok(
        &server,
        &[
            "consume",
            "t",
            "-e",
            "--format",
            "%t/%p/%o key=%k value=%v headers=%h sizes=%K,%S",
        ],
    );
    assert_eq!(
        sorted_lines(&formatted),
        [
            "t/0/0 key= value=a headers= sizes=-1,1",
            "t/0/1 key= value=c headers= sizes=-1,1",
            "t/1/0 key=k1 value=v1 headers=src=test,n=1 sizes=2,2",
            "t/1/1 key=k2 value=v:2 headers=src=test,n=1 sizes=2,3",
            "t/1/2 key= value=nokey headers=src=test,n=1 sizes=-1,5",
            "t/1/3 key= value=b headers= sizes=-1,1",
        ]
    );

    // From an offset, in one partition.
    assert_eq!(
        ok(
            &server,
            &[
                "consume", "t", "-p", "1", "--from", "1", "-e", "-f", "%o %v"
            ]
        ),
        "1 v:2\n2 nokey\n3 b\n"
    );
    // --count stops early.
    assert_eq!(
        ok(
            &server,
            &["consume", "t", "-p", "1", "-n", "2", "-f", "%o\\t%v\\n"]
        ),
        "0\tv1\n1\tv:2\n"
    );
    // From a time: epoch millis, relative, RFC 3339.
    let at = format!("@{before_second}");
    assert_eq!(
        sorted_lines(&ok(&server, &["consume", "t", "--from", &at, "-e"])),
        ["a", "b", "c"]
    );
    assert_eq!(
        sorted_lines(&ok(&server, &["consume", "t", "--from", "-1h", "-e"])).len(),
        6
    );
    assert_eq!(
        ok(
            &server,
            &["consume", "t", "--from", "2999-01-01T00:00:00Z", "-e"]
        ),
        ""
    );
    assert_eq!(
        sorted_lines(&ok(
            &server,
            &["consume", "t", "--from", "2000-01-01T00:00:00+01:00", "-e"]
        ))
        .len(),
        6
    );
    assert_eq!(ok(&server, &["consume", "t", "--from", "end", "-e"]), "");

    // --json: one object per record.
    let out = ok(&server, &["consume", "t", "-p", "1", "-n", "1", "--json"]);
    let record: Value = serde_json::from_str(out.trim_end()).unwrap();
    let ts = record["timestamp"].as_i64().unwrap();
    assert!(ts > 0 && ts <= now_ms(), "{record}");
    assert_eq!(
        record,
        json!({"topic": "t", "partition": 1, "offset": 0, "timestamp": ts,
               "key": "k1", "value": "v1", "headers": {"src": "test", "n": "1"}})
    );
    let run = ferry(&server, &["consume", "t", "--json", "--format", "%v"], "");
    assert_eq!(run.code, 1, "{run:?}");

    // Keys pick partitions with Kafka's murmur2, like the Java client:
    // the same key always lands in the same partition.
    let run = ferry(
        &server,
        &["produce", "t", "-k", "=", "--json"],
        "same=1\nsame=2\nsame=3\n",
    );
    assert_eq!(run.code, 0, "{run:?}");
    let partitions: Vec<i64> = run
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["partition"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(partitions.len(), 3);
    assert!(
        partitions.iter().all(|p| *p == partitions[0]),
        "{partitions:?}"
    );

    // acks=0 gets no offsets back.
    let run = ferry(&server, &["produce", "t", "--acks", "0", "-p", "0"], "x\n");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stderr,
        "sent 1 record to t with acks=0: the broker does not confirm them, so their offsets are unknown\n\
         PARTITION  RECORDS\n\
         0          1\n"
    );
}

#[test]
fn group_consumers_continue_from_committed_offsets_and_reset() {
    let (_dir, server) = start();
    ok(&server, &["topic", "create", "jobs"]);
    ok_in(&server, &["produce", "jobs"], "j0\nj1\nj2\nj3\nj4\n");

    let group = ["consume", "jobs", "--group", "workers"];
    let with = |extra: &[&'static str]| cat(&group, extra);
    assert_eq!(ok(&server, &with(&["-n", "2"])), "j0\nj1\n");
    assert_eq!(ok(&server, &with(&["-n", "2"])), "j2\nj3\n");
    assert_eq!(ok(&server, &with(&["-e"])), "j4\n");
    assert_eq!(ok(&server, &with(&["-e"])), "");
    assert_eq!(
        ok(&server, &["group", "describe", "workers"]),
        "GROUP          workers\n\
         COORDINATOR    0\n\
         STATE          Empty\n\
         PROTOCOL-TYPE  consumer\n\
         PROTOCOL       -\n\
         MEMBERS        0\n\
         TOTAL-LAG      0\n\
         \n\
         TOPIC  PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  MEMBER-ID\n\
         jobs   0          5               5               0    -\n"
    );

    // Dry run: the plan, nothing changes.
    let reset = [
        "group",
        "reset-offsets",
        "workers",
        "--topic",
        "jobs",
        "--to",
    ];
    let run = ferry(&server, &[&reset[..], &["earliest"]].concat(), "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "TOPIC  PARTITION  CURRENT-OFFSET  NEW-OFFSET\n\
         jobs   0          5               0\n"
    );
    assert_eq!(
        run.stderr,
        "dry run: nothing changed; run again with --execute to commit these offsets to group \"workers\"\n"
    );
    assert_eq!(ok(&server, &with(&["-e"])), "");

    // --execute commits; the group reads again from there.
    let run = ferry(
        &server,
        &[&reset[..], &["earliest", "--execute"]].concat(),
        "",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stderr,
        "committed the new offsets of group \"workers\"\n"
    );
    assert_eq!(ok(&server, &with(&["-e"])), "j0\nj1\nj2\nj3\nj4\n");

    let run = ferry(
        &server,
        &[&reset[..], &["shift:-2", "--execute"]].concat(),
        "",
    );
    assert_eq!(
        run.stdout,
        "TOPIC  PARTITION  CURRENT-OFFSET  NEW-OFFSET\n\
         jobs   0          5               3\n"
    );
    assert_eq!(ok(&server, &with(&["-e"])), "j3\nj4\n");

    ok(&server, &[&reset[..], &["1", "--execute"]].concat());
    assert_eq!(ok(&server, &with(&["-n", "1"])), "j1\n");

    let plan = json_of(&server, &[&reset[..], &["latest"]].concat());
    assert_eq!(
        plan,
        json!({"group": "workers", "executed": false, "partitions": [
            {"topic": "jobs", "partition": 0, "current_offset": 2, "new_offset": 5}
        ]})
    );

    // A time: the first record at or after it.
    let t = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    ok_in(&server, &["produce", "jobs"], "late\n");
    ok(
        &server,
        &[&reset[..], &[&format!("@{t}"), "--execute"]].concat(),
    );
    assert_eq!(ok(&server, &with(&["-e"])), "late\n");

    let run = ferry(&server, &[&reset[..], &["sideways"]].concat(), "");
    assert_eq!(run.code, 1, "{run:?}");

    // A new group with no commit starts where --from says.
    assert_eq!(
        ok(
            &server,
            &["consume", "jobs", "-g", "fresh", "--from", "end", "-e"]
        ),
        ""
    );
    assert_eq!(
        ok(
            &server,
            &["consume", "jobs", "-g", "fresh2", "--from", "4", "-e"]
        ),
        "j4\nlate\n"
    );
}

#[test]
fn group_describe_shows_members_assignments_and_lag() {
    let (_dir, server) = start();
    ok(&server, &["topic", "create", "events", "-p", "2"]);
    ok_in(&server, &["produce", "events", "-p", "0"], "a\nb\n");
    ok_in(&server, &["produce", "events", "-p", "1"], "c\n");

    let member = command(
        &server.kafka.to_string(),
        &[
            "consume",
            "events",
            "--group",
            "live",
            "--client-id",
            "watcher",
            "-f",
            "%p:%v",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();

    let d = describe_until(&server, "live", |g| {
        g["state"] == "Stable"
            && g["offsets"]
                .as_array()
                .is_some_and(|o| o.len() == 2 && o.iter().all(|p| p["lag"] == 0))
    });
    let id = d["members"][0]["member_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("watcher-"), "{id}");
    assert_eq!(
        d["members"],
        json!([{"member_id": id, "instance_id": null, "client_id": "watcher",
                "host": "/127.0.0.1", "assignment": {"events": [0, 1]}}])
    );
    let text = ok(&server, &["group", "describe", "live"]);
    assert_eq!(
        text,
        format!(
            "GROUP          live\n\
             COORDINATOR    0\n\
             STATE          Stable\n\
             PROTOCOL-TYPE  consumer\n\
             PROTOCOL       range\n\
             MEMBERS        1\n\
             TOTAL-LAG      0\n\
             \n\
             MEMBER-ID{pad}  CLIENT-ID  HOST        PARTITIONS\n\
             {id}  watcher    /127.0.0.1  events: 0,1\n\
             \n\
             TOPIC   PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  MEMBER-ID\n\
             events  0          2               2               0    {id}\n\
             events  1          1               1               0    {id}\n",
            pad = " ".repeat(id.len() - "MEMBER-ID".len())
        )
    );
    assert_eq!(
        ok(&server, &["group", "list"]),
        "GROUP  STATE   PROTOCOL-TYPE\nlive   Stable  consumer\n"
    );
    assert_eq!(
        ok(&server, &["group", "list", "--state", "empty"]),
        "GROUP  STATE  PROTOCOL-TYPE\n"
    );

    // An active group can neither be reset nor deleted.
    let run = ferry(
        &server,
        &[
            "group",
            "reset-offsets",
            "live",
            "--topic",
            "events",
            "--to",
            "earliest",
            "--execute",
        ],
        "",
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr,
        "ferry: group \"live\" has 1 active member(s) (state Stable); offsets can only be reset while it has none\n\
         hint: stop the group's consumers first (`ferry group describe live` lists them), then run this again\n"
    );
    let run = ferry(&server, &["group", "delete", "live"], "");
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr,
        "ferry: cannot delete group \"live\": NON_EMPTY_GROUP\n\
         hint: the group still has members; stop its consumers first (`ferry group describe live` lists them)\n"
    );

    // Records produced while it runs are consumed and committed.
    ok_in(&server, &["produce", "events", "-p", "1"], "d\n");
    describe_until(&server, "live", |g| {
        g["offsets"][1]["committed_offset"] == 2
    });

    // Ctrl-C: commit, LeaveGroup, exit 0.
    interrupt(&member);
    let run = wait_timeout(member, Duration::from_secs(10));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sorted_lines(&run.stdout), ["0:a", "0:b", "1:c", "1:d"]);
    let d = json_of(&server, &["group", "describe", "live"]);
    assert_eq!(d[0]["state"], "Empty");
    assert_eq!(d[0]["members"], json!([]));

    // Lag of an empty group after more records.
    ok_in(&server, &["produce", "events", "-p", "0"], "e\nf\ng\n");
    assert_eq!(
        ok(&server, &["group", "describe", "live"]),
        "GROUP          live\n\
         COORDINATOR    0\n\
         STATE          Empty\n\
         PROTOCOL-TYPE  consumer\n\
         PROTOCOL       -\n\
         MEMBERS        0\n\
         TOTAL-LAG      3\n\
         \n\
         TOPIC   PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  MEMBER-ID\n\
         events  0          2               5               3    -\n\
         events  1          2               2               0    -\n"
    );

    assert_eq!(
        ok(&server, &["group", "delete", "live"]),
        "GROUP  STATUS\nlive   deleted\n"
    );
    assert_eq!(
        ok(&server, &["group", "list"]),
        "GROUP  STATE  PROTOCOL-TYPE\n"
    );
    let run = ferry(&server, &["group", "describe", "live"], "");
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr,
        "ferry: cannot describe group \"live\": GROUP_ID_NOT_FOUND: the broker knows no such group\n\
         hint: `ferry group list` shows the groups the broker knows\n"
    );
    let run = ferry(&server, &["group", "delete", "live"], "");
    assert_eq!(run.code, 3, "{run:?}");
}

#[test]
fn two_group_members_share_the_partitions() {
    let (_dir, server) = start();
    ok(&server, &["topic", "create", "shared", "-p", "2"]);
    let brokers = server.kafka.to_string();
    let spawn = || {
        command(
            &brokers,
            &["consume", "shared", "-g", "pair", "-f", "%p:%v"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let first = spawn();
    describe_until(&server, "pair", |g| g["state"] == "Stable");
    let second = spawn();
    let d = describe_until(&server, "pair", |g| {
        g["state"] == "Stable" && g["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    let mut assigned: Vec<Value> = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["assignment"].clone())
        .collect();
    assigned.sort_by_key(|a| a.to_string());
    assert_eq!(assigned, [json!({"shared": [0]}), json!({"shared": [1]})]);

    ok_in(&server, &["produce", "shared", "-p", "0"], "zero\n");
    ok_in(&server, &["produce", "shared", "-p", "1"], "one\n");
    describe_until(&server, "pair", |g| {
        g["total_lag"] == 0
            && g["offsets"]
                .as_array()
                .is_some_and(|o| o.len() == 2 && o.iter().all(|p| p["committed_offset"] == 1))
    });
    interrupt(&first);
    interrupt(&second);
    let a = wait_timeout(first, Duration::from_secs(10));
    let b = wait_timeout(second, Duration::from_secs(10));
    assert_eq!((a.code, b.code), (0, 0), "{a:?} {b:?}");
    let mut outputs = [a.stdout, b.stdout];
    outputs.sort();
    assert_eq!(outputs, ["0:zero\n".to_string(), "1:one\n".to_string()]);
}
