//! The `ferry` binary: `ferry serve` runs the broker.

mod config;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "One broker for Kafka, AMQP and SQS clients",
    long_about = "Ferry is a message broker that speaks the Kafka wire protocol (and, as they land, \
AMQP 0-9-1 and the SQS API) over one crash-safe storage engine.\n\n\
Start it with `ferry serve`; data goes to ./ferry-data unless --data-dir says otherwise."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(config::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
