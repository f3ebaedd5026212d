//! `ferry serve`: open the broker, bind the listeners, run until a signal,
//! then close every log cleanly.

use std::net::SocketAddr;

use anyhow::Context;
use ferry_core::{Broker, BrokerConfig};
use ferry_kafka::KafkaConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, ServeArgs, Settings, split_host_port};
use crate::http_listener;

fn init_logging(format: LogFormat) {
    // FERRY_LOG takes tracing's filter syntax, e.g. "info,ferry_kafka=debug".
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args)?;
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(settings))
}

async fn bind(what: &str, addr: &str, flag: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("{what} listener cannot bind {addr} (choose another address with {flag})")
    })?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Watch the signals before anything is announced: a supervisor may send
    // SIGTERM as soon as it sees a listener's log line, and that must be a
    // clean shutdown, not the default action (death without flushing).
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut broker_config = BrokerConfig::new(&settings.data_dir);
    broker_config.auto_create_topics = settings.auto_create_topics;
    broker_config.default_partitions = settings.default_partitions;
    broker_config.topic_defaults = settings.topic_defaults.clone();
    broker_config.retention_check_interval_ms = settings.retention_check_interval_ms;
    broker_config.groups = settings.groups.clone();
    broker_config.resource_limits = settings.resource_limits;
    broker_config.partitions_max = settings.partitions_max;
    broker_config.queues_per_vhost_max = settings.queues_per_vhost_max;
    broker_config.exchanges_per_vhost_max = settings.exchanges_per_vhost_max;
    broker_config.bindings_per_vhost_max = settings.bindings_per_vhost_max;

    // Bind before opening the data directory, so a taken port fails fast.
    let (kafka_listener, kafka_addr) =
        bind("kafka", &settings.kafka_listen, "--kafka-listen").await?;
    let (amqp_listener, amqp_addr) = bind("amqp", &settings.amqp_listen, "--amqp-listen").await?;
    let (sqs_listener, sqs_addr) = bind("sqs", &settings.sqs_listen, "--sqs-listen").await?;
    let (admin_listener, http_addr) = bind("http", &settings.http_listen, "--http-listen").await?;

    let data_dir = settings.data_dir.display().to_string();
    let broker = tokio::task::spawn_blocking(move || Broker::open(broker_config))
        .await
        .context("opening the data directory panicked")?
        .with_context(|| format!("cannot open data directory {data_dir}"))?;
    tracing::info!(data_dir = %data_dir, topics = broker.topics().len(), cluster_id = broker.cluster_id(), "broker ready");

    let (adv_host, adv_port) = match &settings.kafka_advertised {
        Some(a) => split_host_port(a).context("--kafka-advertised")?,
        None if kafka_addr.ip().is_unspecified() => {
            tracing::warn!(
                "kafka listens on all interfaces but no --kafka-advertised was given; telling clients 127.0.0.1"
            );
            ("127.0.0.1".to_string(), kafka_addr.port())
        }
        None => (kafka_addr.ip().to_string(), kafka_addr.port()),
    };
    let mut kafka_config = KafkaConfig::new(adv_host, adv_port);
    kafka_config.request_bytes_max = settings.kafka_request_bytes_max;
    kafka_config.connections_max = settings.kafka_connections_max;
    kafka_config.connection_idle_ms = settings.kafka_idle_timeout.as_millis() as u64;
    kafka_config.request_read_timeout_ms = settings.kafka_request_timeout.as_millis() as u64;
    kafka_config.fetch_bytes_max = settings.kafka_fetch_bytes_max;
    kafka_config.queued_request_bytes_max = settings.kafka_queued_request_bytes_max;

    for vhost in &settings.amqp_vhosts {
        broker.messaging().add_vhost(vhost);
    }

    let fsyncs = broker.metrics().clone();
    ferry_log::sync_observer::observe_syncs(move |o| fsyncs.fsync(o.elapsed, o.records));
    let maintenance = tokio::spawn(broker.clone().run_maintenance());
    let resource_monitor = tokio::spawn(broker.clone().run_resource_monitor());
    let group_timers = tokio::spawn(broker.groups().clone().run_timers());
    let kafka = tokio::spawn(ferry_kafka::serve(
        kafka_listener,
        broker.clone(),
        kafka_config,
    ));
    tracing::info!("kafka listening on {kafka_addr}");
    let amqp_config = ferry_amqp::AmqpConfig {
        metrics: broker.metrics().clone(),
        frame_max: settings.amqp_frame_max,
        channel_max: settings.amqp_channel_max,
        heartbeat_s: settings.amqp_heartbeat_s,
        message_bytes_max: settings.amqp_message_bytes_max,
        handshake_timeout: settings.amqp_handshake_timeout,
        frame_timeout: settings.amqp_frame_timeout,
        connections_max: settings.amqp_connections_max,
        consumer_unacked_max: settings.amqp_consumer_unacked_max,
        consumers_per_channel_max: settings.amqp_consumers_per_channel_max,
        access: settings.amqp_access.clone(),
    };
    let amqp = tokio::spawn(ferry_amqp::serve_with_alarm(
        amqp_listener,
        broker.messaging().clone(),
        amqp_config,
        broker.alarms(),
    ));
    tracing::info!("amqp listening on {amqp_addr}");
    let mut sqs_config = ferry_sqs::SqsConfig::new(&settings.data_dir);
    sqs_config.advertised = settings.sqs_advertised.clone();
    sqs_config.region = settings.sqs_region.clone();
    sqs_config.account_id = settings.sqs_account_id.clone();
    sqs_config.alarms = broker.alarms();
    sqs_config.metrics = broker.metrics().clone();
    sqs_config.request_bytes_max = settings.sqs_request_bytes_max;
    let sqs_state = ferry_sqs::Sqs::open(broker.messaging().clone(), sqs_config)
        .context("cannot start the SQS front end")?;
    let sqs = tokio::spawn(http_listener::serve(
        "sqs",
        sqs_listener,
        ferry_sqs::router(sqs_state, sqs_addr),
        settings.sqs_limits,
        Some(broker.metrics().connections().clone()),
    ));
    tracing::info!("sqs listening on {sqs_addr}");
    let listeners = [
        ("kafka", kafka_addr),
        ("amqp", amqp_addr),
        ("sqs", sqs_addr),
        ("http", http_addr),
    ]
    .into_iter()
    .map(|(protocol, address)| ferry_http::Listener {
        protocol: protocol.to_string(),
        address,
    })
    .collect();
    let admin = ferry_http::Admin::new(
        broker.clone(),
        ferry_http::HttpConfig {
            listeners,
            admins: settings.http_admins.clone(),
        },
    );
    let rates = tokio::spawn(ferry_http::run_rates(admin.clone()));
    let http = tokio::spawn(http_listener::serve(
        "http",
        admin_listener,
        ferry_http::router(admin),
        settings.http_limits,
        None,
    ));
    tracing::info!("http listening on {http_addr}");

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    kafka.abort();
    amqp.abort();
    sqs.abort();
    http.abort();
    rates.abort();
    maintenance.abort();
    resource_monitor.abort();
    group_timers.abort();
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .context("closing the logs panicked")?;
    tracing::info!("stopped; every log flushed and closed");
    Ok(())
}
