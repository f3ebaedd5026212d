//! TCP connections: reading size-prefixed request frames within limits,
//! running requests concurrently, and writing responses in request order (the
//! Kafka protocol requires in-order responses per connection, and clients
//! pipeline requests, which is what lets many produce requests share one
//! fsync).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::Broker;
use ferry_core::connection_limit::{ConnectionLimit, ConnectionSlot};
use ferry_core::connections::Connection;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::KafkaConfig;
use crate::handlers::{self, Outcome};
use crate::queued_bytes::QueuedBytes;

/// What every request handler may use.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub broker: Arc<Broker>,
    pub config: Arc<KafkaConfig>,
    pub peer: SocketAddr,
    /// Shared by every connection of the listener.
    pub queued: Arc<QueuedBytes>,
}

/// A request frame holds at least api key, version and correlation id.
pub(crate) const REQUEST_BYTES_MIN: usize = 8;
/// After a failed accept (e.g. out of file descriptors), wait before retrying
/// instead of spinning.
const ACCEPT_RETRY_MS: u64 = 50;

/// A request being answered, with what it holds until its response has been
/// written: its bytes of the connection's request budget and, for a Fetch,
/// the connection's one fetch slot. Released only once written, so a client
/// that never reads its responses stops being read instead of making the
/// broker hold its requests and their responses (a Fetch response can be
/// `fetch_bytes_max`, however small the request).
struct InFlight {
    task: JoinHandle<Outcome>,
    _budget: OwnedSemaphorePermit,
    _queued: OwnedSemaphorePermit,
    _fetch: Option<OwnedSemaphorePermit>,
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: Arc<KafkaConfig>,
) {
    let limit = ConnectionLimit::new("kafka", config.connections_max);
    let queued = Arc::new(QueuedBytes::new(config.queued_request_bytes_max));
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let Some(slot) = limit.admit() else {
                    continue;
                };
                let ctx = Arc::new(Ctx {
                    broker: broker.clone(),
                    config: config.clone(),
                    peer,
                    queued: queued.clone(),
                });
                tokio::spawn(serve_connection(socket, ctx, slot));
            }
            Err(e) => {
                tracing::warn!(error = %e, "kafka listener could not accept a connection");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

async fn serve_connection(socket: TcpStream, ctx: Arc<Ctx>, _slot: ConnectionSlot) {
    let peer = ctx.peer;
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
    }
    tracing::debug!(%peer, "kafka client connected");
    let local = socket.local_addr().unwrap_or(peer);
    let registration = ctx
        .broker
        .metrics()
        .connections()
        .register("kafka", peer, local);
    let (rd, wr) = socket.into_split();
    let (tx, rx) = mpsc::channel(ctx.config.connection_requests_in_flight_max.max(1));
    let reader = read_requests(rd, tx, ctx.clone(), &registration);
    let writer = write_responses(wr, rx, &registration);
    tokio::pin!(reader, writer);
    tokio::select! {
        // Asked to close by an operator (admin API): dropping the halves
        // closes the socket; Kafka has no way to say why.
        reason = registration.close_requested() => {
            tracing::info!(%peer, "closing kafka connection: {reason}");
        }
        read = &mut reader => {
            if let Err(reason) = read {
                tracing::warn!(%peer, "closing kafka connection: {reason}");
            }
            // Answer what was already read before closing.
            if let Err(reason) = writer.await {
                tracing::warn!(%peer, "closing kafka connection: {reason}");
            }
        }
        written = &mut writer => {
            if let Err(reason) = written {
                tracing::warn!(%peer, "closing kafka connection: {reason}");
            }
        }
    }
    tracing::debug!(%peer, "kafka client disconnected");
}

/// Reads frames until the client closes or misbehaves. `Ok` on a clean close.
async fn read_requests(
    mut rd: OwnedReadHalf,
    tx: mpsc::Sender<InFlight>,
    ctx: Arc<Ctx>,
    registration: &Connection,
) -> Result<(), String> {
    let config = ctx.config.clone();
    // Bytes of requests read but not yet answered, so that a client that never
    // reads its responses cannot make the broker buffer without bound.
    let budget = Arc::new(Semaphore::new(config.request_bytes_max));
    // Clients send one Fetch per broker at a time; more would let a few small
    // requests pin many large responses.
    let fetch_slot = Arc::new(Semaphore::new(1));
    let idle = Duration::from_millis(config.connection_idle_ms);
    let read_timeout = Duration::from_millis(config.request_read_timeout_ms);
    let mut alarms = ctx.broker.alarms();
    loop {
        let mut size = [0u8; 4];
        match tokio::time::timeout(idle, rd.read_exact(&mut size)).await {
            Err(_) => {
                return Err(format!(
                    "idle for {} ms (connection_idle_ms)",
                    config.connection_idle_ms
                ));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(format!("read failed: {e}")),
            Ok(Ok(_)) => {}
        }
        let size = i32::from_be_bytes(size);
        let size = match usize::try_from(size) {
            Ok(s) if (REQUEST_BYTES_MIN..=config.request_bytes_max).contains(&s) => s,
            _ => {
                return Err(format!(
                    "request size {size} is outside [{REQUEST_BYTES_MIN}, {}] bytes (raise kafka.request_bytes_max to allow larger requests)",
                    config.request_bytes_max
                ));
            }
        };
        let permit = budget
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| "request budget closed".to_string())?;
        let queued = ctx.queued.take(size).await;
        // Read into spare capacity rather than a zero-filled buffer: zeroing
        // a megabyte per produce request was a measurable share of the CPU.
        let mut frame = BytesMut::with_capacity(size);
        match tokio::time::timeout(read_timeout, read_frame_body(&mut rd, &mut frame, size)).await {
            Err(_) => {
                return Err(format!(
                    "request of {size} bytes not received within {} ms",
                    config.request_read_timeout_ms
                ));
            }
            Ok(Err(e)) => return Err(format!("request truncated: {e}")),
            Ok(Ok(_)) => {}
        }
        let frame: Bytes = frame.freeze();
        registration.received(4 + size as u64, 1);
        let request = handlers::parse_header(&frame).map_err(|e| e.to_string())?;
        if !registration.has_client()
            && let Some(client) = &request.header.client_id
        {
            let client = client.to_string();
            registration.update_identity(|i| i.client = Some(client));
        }
        let api = request.api_key;
        let fetch = match api {
            ApiKey::Fetch => Some(
                fetch_slot
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| "fetch slot closed".to_string())?,
            ),
            _ => None,
        };
        let work = handlers::start(ctx.clone(), request, frame, &mut alarms).await;
        let metrics = ctx.broker.metrics().clone();
        let started = std::time::Instant::now();
        let task = tokio::spawn(async move {
            let outcome = work.await;
            metrics.request("kafka", format!("{api:?}"), started.elapsed());
            outcome
        });
        let in_flight = InFlight {
            task,
            _budget: permit,
            _queued: queued,
            _fetch: fetch,
        };
        if tx.send(in_flight).await.is_err() {
            return Ok(());
        }
    }
}

/// Fills `frame` with exactly `size` bytes.
async fn read_frame_body(
    rd: &mut OwnedReadHalf,
    frame: &mut BytesMut,
    size: usize,
) -> std::io::Result<()> {
    while frame.len() < size {
        let mut limited = (&mut *rd).take((size - frame.len()) as u64);
        if limited.read_buf(frame).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Writes each request's response in the order the requests arrived.
async fn write_responses(
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<InFlight>,
    registration: &Connection,
) -> Result<(), String> {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(in_flight) = rx.recv().await {
        // The permits stay bound to the end of this iteration: after the
        // response went to the socket.
        let InFlight {
            task,
            _budget,
            _queued,
            _fetch,
        } = in_flight;
        if !task.is_finished() {
            // Don't hold finished responses back while a slow one (a long
            // poll, an fsync) is pending.
            wr.flush().await.map_err(|e| format!("write failed: {e}"))?;
        }
        match task.await {
            Ok(Outcome::Respond(bytes)) => {
                wr.write_all(&bytes)
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
                registration.sent(bytes.len() as u64, 1);
            }
            Ok(Outcome::NoResponse) => {}
            Ok(Outcome::Close(reason)) => {
                let _ = wr.flush().await;
                return Err(reason);
            }
            Err(e) => {
                let _ = wr.flush().await;
                return Err(format!("request handler failed: {e}"));
            }
        }
        if rx.is_empty() {
            wr.flush().await.map_err(|e| format!("write failed: {e}"))?;
        }
    }
    wr.flush().await.map_err(|e| format!("write failed: {e}"))
}
