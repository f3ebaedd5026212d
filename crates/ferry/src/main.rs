//! The `ferry` binary: `ferry serve` runs the broker; `ferry topic`,
//! `produce`, `consume` and `group` are a Kafka client for operators;
//! `ferry bench` is a load generator (`ferry bench amqp`).

mod bench;
mod cli;
mod config;
mod http_listener;
mod serve;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: a third of the broker's CPU per SQS
/// message was glibc malloc/free (JSON trees, HTTP buffers, small per-message
/// allocations); with mimalloc the broker spends 24 instead of 36 µs of CPU
/// per message sent, received and deleted (docs/benchmarks.md). It keeps
/// more memory mapped: 30 instead of 17 MB of RSS with 2 million AMQP
/// messages queued.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "One broker for Kafka, AMQP and SQS clients",
    long_about = "Ferry is a message broker that speaks the Kafka wire protocol (and, as they land, \
AMQP 0-9-1 and the SQS API) over one crash-safe storage engine.\n\n\
Start it with `ferry serve`; data goes to ./ferry-data unless --data-dir says otherwise.\n\n\
The other commands are a Kafka client for operators: they talk to a running broker \
(--brokers, default 127.0.0.1:9092) over the Kafka protocol, so they work against Kafka too. \
See docs/cli.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    // Boxed: its many flags make it far larger than the other commands.
    Serve(Box<config::ServeArgs>),
    /// Measure a broker (Ferry or another) with a load generator: `ferry bench amqp`.
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> std::process::ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => return bench::run(args),
        Command::Client(command) => return cli::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Help and version exit 0. Usage errors of `ferry serve` keep clap's exit
/// code 2; those of the client commands exit 1, because there 2 means
/// "broker unreachable" (docs/cli.md).
fn usage_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let serve = std::env::args_os().nth(1).is_some_and(|a| a == "serve");
    if serve || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let _ = e.print();
    std::process::ExitCode::from(cli::Exit::Local as u8)
}
