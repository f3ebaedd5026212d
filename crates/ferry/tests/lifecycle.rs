//! Start-up and shut-down behaviour of `ferry serve`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::api;
use common::{Server, encode_batch, now_ms, record};
use kafka_protocol::records::Compression;

#[test]
fn refuses_a_data_dir_that_another_broker_holds() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start(dir.path(), &[]);
    let log = Server::try_start_at(dir.path(), "127.0.0.1:0", &[])
        .err()
        .expect("second broker started on a locked data dir");
    assert!(log.contains("in use by another ferry process"), "{log}");
}

#[test]
fn refuses_a_port_that_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let log = Server::try_start_at(dir.path(), &addr, &[])
        .err()
        .expect("started on a taken port");
    assert!(
        log.contains("cannot bind") && log.contains("--kafka-listen"),
        "{log}"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--default-partitions", "2"]);
    let mut c = server.client();
    let t = now_ms();
    let batch = encode_batch(
        &[record(Some("k"), "v1", t), record(None, "v2", t + 1)],
        Compression::Gzip,
    );
    let (err, base) = api::produce(&mut c, "auto", 1, batch);
    assert_eq!((err, base), (0, 0));
    drop(c);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    server.wait_for_log("stopped");

    let server = Server::start(dir.path(), &[]);
    let mut c = server.client();
    let meta = api::metadata(&mut c, Some(&["auto"]));
    assert_eq!(meta.topics[0].error_code, 0);
    assert_eq!(meta.topics[0].partitions.len(), 2);
    let records = api::read_all(&mut c, "auto", 1, 0);
    let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, vec!["v1".as_bytes(), "v2".as_bytes()]);
    assert_eq!(records[0].key.as_deref(), Some("k".as_bytes()));
    assert_eq!(records[1].timestamp, t + 1);
}

#[test]
fn help_names_the_public_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--data-dir",
        "--kafka-listen",
        "--kafka-advertised",
        "--config",
        "FERRY_DATA_DIR",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
