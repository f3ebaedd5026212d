//! `ferry bench`: load generators that measure a broker with the same client
//! whichever broker it is (Ferry, RabbitMQ, ...), so that a comparison is
//! side by side. `ferry bench amqp` speaks AMQP 0-9-1 through the `lapin`
//! crate, `ferry bench sqs` the SQS JSON protocol over hyper, `ferry bench
//! kafka` Produce and Fetch on the `kafka-protocol` codecs, and `ferry
//! bench nats` and `ferry bench redis` drive NATS JetStream and Redis Streams
//! as durable queues with small clients of their own protocols (`driver`
//! runs the load for these three, `wire` is their buffered socket). They share
//! `stats` (latency histograms, counters, the progress line, the broker's
//! CPU and memory) and `report` (the summary and its JSON).

mod amqp;
mod driver;
mod kafka;
mod nats;
mod plot;
mod redis;
mod report;
mod sqs;
mod stats;
mod wire;

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// `ferry bench <protocol> ...`
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Publish and consume through an AMQP 0-9-1 broker (Ferry or RabbitMQ)
    /// and report msgs/s, MB/s and end-to-end latency.
    #[command(
        long_about = "Publish and consume through an AMQP 0-9-1 broker (Ferry, RabbitMQ or any \
other) with the lapin client, and report published and consumed msgs/s and MB/s and the \
end-to-end latency (p50, p99, p99.9, max) from a send timestamp carried in each message body.\n\n\
Queues are durable and named PREFIX-0 .. PREFIX-(N-1); they are declared (and, unless \
--no-purge, purged) before the run. Producers use the default exchange with the queue name as \
routing key; producer i publishes to queues i, i+P, i+2P, ... in turn (to queue i mod N when \
there are more producers than queues). Every producer and every consumer has its own \
connection and channel.\n\n\
A progress line goes to stderr every second; the summary goes to stdout (JSON with --json).",
        after_help = concat!(
            "Examples:\n",
            "  ferry bench amqp --count 1000000 --persistent --confirm 500 --manual-ack --prefetch 100\n",
            "  ferry bench amqp --queues 16 --duration 30s --rate 10000 --persistent --confirm --manual-ack\n",
            "  ferry bench amqp --publish-only --count 10000000 --persistent --confirm   # fill a backlog\n",
            "  ferry bench amqp --consume-only --manual-ack                              # drain it\n\n",
            "Exit codes: 0 the run completed, 1 it did not (usage error, connection or channel \
error, messages missing at the end)."
        )
    )]
    Amqp(amqp::AmqpArgs),
    /// Send, receive and delete through an SQS endpoint (Ferry, ElasticMQ,
    /// ...) in batches, or measure long-poll wake-up latency.
    #[command(
        long_about = "Send, receive and delete through an SQS endpoint (Ferry, ElasticMQ or any \
other that speaks the AWS JSON 1.0 protocol over plain HTTP; requests are not signed), and \
report sent, received and deleted msgs/s and MB/s, the end-to-end latency (p50, p99, p99.9, \
max) from a send timestamp carried in each message body, and each action's request round \
trip.\n\n\
Queues are named PREFIX-0 .. PREFIX-(N-1) (PREFIX-i.fifo with --fifo); they are created (and, \
unless --no-purge, purged) before the run. Every producer and every consumer has its own \
keep-alive HTTP/1.1 connection with one request in flight. Producers send with \
SendMessageBatch (--batch entries); producer i sends to queues i, i+P, ... in turn (to queue \
i mod N when there are more producers than queues). Consumers (--consumers per queue) \
receive with ReceiveMessage (MaxNumberOfMessages --batch, WaitTimeSeconds --wait-time) and \
delete each batch with DeleteMessageBatch before receiving again. The run ends when every \
message sent was deleted.\n\n\
--long-poll measures instead how soon a waiting receive answers: per queue, a ReceiveMessage \
waits (WaitTimeSeconds 20) on the empty queue; after --long-poll-gap another connection sends \
one message; the sample is the time from just before the SendMessage to the receive's \
answer.\n\n\
A progress line goes to stderr every second; the summary goes to stdout (JSON with --json).",
        after_help = concat!(
            "Examples:\n",
            "  ferry bench sqs --count 1000000 --producers 8 --consumers 8\n",
            "  ferry bench sqs --fifo --groups 1000 --count 1000000 --producers 8 --consumers 8\n",
            "  ferry bench sqs --duration 30s --rate 20000 --batch 10\n",
            "  ferry bench sqs --long-poll --count 2000\n",
            "  ferry bench sqs --endpoint http://127.0.0.1:9325   # e.g. ElasticMQ\n\n",
            "Exit codes: 0 the run completed, 1 it did not (usage error, connection or HTTP \
error, batch entries that failed, messages not deleted at the end)."
        )
    )]
    Sqs(sqs::SqsArgs),
    /// Produce and consume through a Kafka-protocol broker (Ferry, Kafka,
    /// Redpanda) and report msgs/s, MB/s and end-to-end latency.
    #[command(
        long_about = "Produce and consume through a Kafka-protocol broker (Ferry, Apache Kafka, \
Redpanda; one node) and report produced and consumed msgs/s and MB/s and the end-to-end \
latency from a send timestamp carried in each record value.\n\n\
The topic is PREFIX-N with one partition per queue (N = --queues), deleted and created again \
before the run unless --no-purge. Producers send uncompressed RecordBatch v2 with Produce v9 \
(acks all by default), one request per flush with a batch for each partition that has records \
waiting, and keep up to --window records unacknowledged; producer i sends to partitions i, \
i+P, ... in turn. Each partition has one consumer, fetching with Fetch v12 from the earliest \
offset (--fetch-bytes per request).\n\n\
A progress line goes to stderr every second; the summary goes to stdout (JSON with --json).",
        after_help = concat!(
            "Examples:\n",
            "  ferry bench kafka --count 1000000 --window 10000\n",
            "  ferry bench kafka --queues 8 --producers 2 --size 10240 --count 100000\n",
            "  ferry bench kafka --duration 30s --rate 10000\n",
            "  ferry bench kafka --publish-only --count 10000000   # fill a backlog\n",
            "  ferry bench kafka --consume-only                    # read it\n\n",
            "Exit codes: 0 the run completed, 1 it did not (usage error, connection error, a \
partition error, records missing at the end)."
        )
    )]
    Kafka(kafka::KafkaArgs),
    /// Publish and consume through NATS JetStream (file-stored work-queue
    /// streams, pull consumers) for comparison with Ferry.
    #[command(
        long_about = "Publish and consume through NATS JetStream for comparison with Ferry: each \
queue is a file-stored stream with work-queue retention (a message is removed once \
acknowledged), named PREFIX-i with subject PREFIX-i. Producers publish with a reply subject and \
count JetStream's acknowledgements, keeping up to --window unacknowledged; consumers share the \
stream's durable pull consumer, fetch --prefetch messages per pull and acknowledge each with \
the next pull. Latency is measured from a send timestamp in each body, as in `ferry bench \
amqp`.\n\nStreams are deleted and created again before the run unless --no-purge. The server \
needs JetStream enabled (nats-server -js).",
        after_help = concat!(
            "Examples:\n",
            "  ferry bench nats --count 1000000 --queues 16\n",
            "  ferry bench nats --publish-only --count 10000000   # fill a backlog\n",
            "  ferry bench nats --consume-only                    # drain it\n"
        )
    )]
    Nats(nats::NatsArgs),
    /// Publish and consume through Redis Streams (XADD, XREADGROUP, XACK +
    /// XDEL) for comparison with Ferry.
    #[command(
        long_about = "Publish and consume through Redis Streams for comparison with Ferry: each \
queue is a stream PREFIX-i with one consumer group. Producers pipeline XADD, keeping up to \
--window unanswered (with `appendfsync always` the server answers after its fsync); consumers \
XREADGROUP --prefetch entries (BLOCK 1 s) and acknowledge and delete them (XACK, XDEL) with \
the next read, so consumed entries leave memory as they leave a queue. Latency is measured from \
a send timestamp in each body, as in `ferry bench amqp`.\n\nStreams are deleted before the run \
unless --no-purge.",
        after_help = concat!(
            "Examples:\n",
            "  ferry bench redis --count 1000000 --queues 16\n",
            "  ferry bench redis --publish-only --count 10000000   # fill a backlog\n",
            "  ferry bench redis --consume-only                    # drain it\n"
        )
    )]
    Redis(redis::RedisArgs),
}

pub fn run(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        BenchCommand::Amqp(a) => runtime.block_on(amqp::run(a)),
        BenchCommand::Sqs(a) => runtime.block_on(sqs::run(a)),
        BenchCommand::Kafka(a) => runtime.block_on(kafka::run(a)),
        BenchCommand::Nats(a) => runtime.block_on(nats::run(a)),
        BenchCommand::Redis(a) => runtime.block_on(redis::run(a)),
    };
    // lapin's I/O threads may still be winding down; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferry bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
