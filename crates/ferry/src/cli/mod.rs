//! The operator CLI: `ferry topic|produce|consume|group`. Every command is a
//! Kafka client of a running broker (`--brokers`), so it works against any
//! Kafka-compatible broker, not only Ferry. See docs/cli.md.

pub mod client;
mod consume;
pub mod error;
mod group;
mod member;
mod output;
mod produce;
mod time;
mod topic;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

pub use error::Exit;

const EXIT_CODES: &str = "Exit codes: 0 success, 1 usage or local error, 2 broker unreachable, \
3 the broker refused (the Kafka error is named).";

/// Where the broker is and how to talk to it; accepted by every client command.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Broker(s) to bootstrap from, HOST:PORT[,HOST:PORT...].
    #[arg(
        short = 'b',
        long,
        env = "FERRY_BROKERS",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT",
        global = true
    )]
    pub brokers: String,
    /// Print JSON for scripts instead of tables (one JSON document, or one
    /// JSON object per line for records).
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for a broker to answer a request, in milliseconds.
    #[arg(
        long,
        env = "FERRY_TIMEOUT_MS",
        default_value_t = 30_000,
        value_name = "MS",
        global = true
    )]
    pub timeout_ms: u64,
    /// Client id sent to the broker (shown by `ferry group describe`).
    #[arg(long, default_value = "ferry-cli", value_name = "ID", global = true)]
    pub client_id: String,
}

impl ClientArgs {
    fn options(&self) -> client::Options {
        client::Options {
            brokers: self
                .brokers
                .split(',')
                .filter(|b| !b.trim().is_empty())
                .map(client::normalize_addr)
                .collect(),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            client_id: self.client_id.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete topics, and change their configs.
    #[command(after_help = EXIT_CODES)]
    Topic(topic::TopicArgs),
    /// Write stdin to a topic, one record per line.
    #[command(
        long_about = "Write stdin to a topic, one record per line (the newline is not part of \
the record). Records are batched and sent as stdin fills; a summary of what was written \
(records, partitions, offsets) goes to stderr at the end, and with --json one line per \
acknowledged record goes to stdout.",
        after_help = concat!(
            "Examples:\n",
            "  printf 'hello\\nworld\\n' | ferry produce greetings\n",
            "  printf 'alice:hi\\n' | ferry produce greetings --key-separator : --header source=cli\n",
            "  ferry produce orders --partition 2 --acks 1 --compression zstd < orders.txt\n\n",
            "Exit codes: 0 success, 1 usage or local error, 2 broker unreachable, \
3 the broker refused (the Kafka error is named)."
        )
    )]
    Produce(produce::ProduceArgs),
    /// Read records from a topic and print them.
    #[command(
        long_about = "Read records from a topic and print them, by default each record's value \
on its own line. Without --group every partition (or those given with --partition) is read \
from --from (default: beginning). With --group the CLI is a member of that consumer group: \
it gets partitions from the group's assignment, starts at the group's committed offsets \
(--from only decides for partitions without one; default: beginning), and commits what it \
printed every second and when it stops. It follows the topic until Ctrl-C unless --count or \
--exit-at-end says when to stop.",
        after_help = concat!(
            "FROM is one of: beginning | end | OFFSET (a number) | TIME, where TIME is\n",
            "  RFC 3339        2026-11-28T10:00:00Z, 2026-11-28T10:00:00+01:00, 2026-11-28\n",
            "  relative        -10m, -2h, -30s, -1d, -500ms (before now)\n",
            "  epoch millis    @1700000000000\n",
            "and reads from the first record whose timestamp is at or after TIME.\n\n",
            "FORMAT placeholders (kcat's): %t topic, %p partition, %o offset, %k key, %v (or %s) value,\n",
            "  %T timestamp (epoch ms), %d timestamp (RFC 3339), %h headers (k=v,k=v), %K key length,\n",
            "  %S value length, %% a percent sign; \\n, \\t and \\\\ are escapes. A newline is added\n",
            "  unless FORMAT ends with one. Default: %v\n\n",
            "Examples:\n",
            "  ferry consume orders --from beginning --exit-at-end\n",
            "  ferry consume orders --from -10m --format '%p/%o %k=%v\\n'\n",
            "  ferry consume orders --group billing --count 100 --json\n\n",
            "Exit codes: 0 success, 1 usage or local error, 2 broker unreachable, \
3 the broker refused (the Kafka error is named)."
        )
    )]
    Consume(consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(after_help = EXIT_CODES)]
    Group(group::GroupArgs),
}

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    /// Wait until the record is durable on every in-sync replica.
    All,
    /// Wait for the leader only.
    #[value(name = "1")]
    Leader,
    /// Do not wait: the broker sends no answer, offsets are unknown.
    #[value(name = "0")]
    None,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Runs a client command and returns the process exit code.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Local as u8);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Topic(args) => topic::run(args).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Group(args) => group::run(args).await,
        }
    });
    // Background tasks (heartbeats, the stdin reader) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit as u8)
        }
    }
}
