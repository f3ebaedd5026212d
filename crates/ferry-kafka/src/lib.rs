//! Ferry's Kafka front end: the Kafka wire protocol over TCP, translated into
//! `ferry-core` calls. Codecs come from the `kafka-protocol` crate; this crate
//! holds connection state only (framing, pipelining, the per-API handlers).
//!
//! It must never reach into `ferry-log` files or hold broker state of its own.

mod connection;
pub mod consumer_protocol;
mod errors;
mod handlers;
mod queued_bytes;
mod versions;

use std::sync::Arc;

use ferry_core::Broker;
use tokio::net::TcpListener;

pub use handlers::decode_request;
pub use versions::SUPPORTED_APIS;

/// Settings of the Kafka listener.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Host that clients are told to connect to (Metadata, FindCoordinator).
    pub advertised_host: String,
    pub advertised_port: u16,
    /// This broker's id in Metadata responses.
    pub node_id: i32,
    /// Kafka's `socket.request.max.bytes`: a larger request closes the connection.
    pub request_bytes_max: usize,
    /// Requests read from one connection but not yet answered; the connection
    /// stops reading past this (Kafka clients pipeline requests).
    pub connection_requests_in_flight_max: usize,
    /// Kafka's `connections.max.idle.ms`.
    pub connection_idle_ms: u64,
    /// Longest wait, once a request's first bytes arrived, for the rest of it.
    pub request_read_timeout_ms: u64,
    /// Cap on a Fetch's `max_wait_ms`.
    pub fetch_wait_ms_max: u64,
    /// Cap on a Fetch's `max_bytes` (Kafka's `fetch.max.bytes`): the record
    /// bytes one Fetch response holds, beyond one whole first batch.
    pub fetch_bytes_max: usize,
    /// Open connections on the listener (Kafka's `max.connections`); a
    /// connection accepted past this is closed before anything is read.
    pub connections_max: usize,
    /// Bytes of requests read from all connections together and not yet
    /// answered (Kafka's `queued.max.request.bytes`); past it no connection
    /// is read until some are answered.
    pub queued_request_bytes_max: usize,
}

impl KafkaConfig {
    pub fn new(advertised_host: impl Into<String>, advertised_port: u16) -> Self {
        KafkaConfig {
            advertised_host: advertised_host.into(),
            advertised_port,
            node_id: 0,
            request_bytes_max: 100 * 1024 * 1024,
            connection_requests_in_flight_max: 1024,
            connection_idle_ms: 10 * 60 * 1000,
            request_read_timeout_ms: 30_000,
            fetch_wait_ms_max: 30_000,
            fetch_bytes_max: 55 * 1024 * 1024,
            connections_max: 10_000,
            queued_request_bytes_max: 256 * 1024 * 1024,
        }
    }
}

/// Accepts Kafka clients on `listener` until the returned future is dropped.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, config: KafkaConfig) {
    connection::accept_loop(listener, broker, Arc::new(config)).await
}
