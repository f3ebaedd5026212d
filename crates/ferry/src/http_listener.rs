//! Serving the SQS and admin routers over HTTP/1.1 with the limits every
//! Ferry listener has: a cap on open connections, a deadline for a
//! request's head (which is also how long an idle keep-alive connection is
//! kept), and a deadline for its body. `axum::serve` has none of these: it
//! sets no timer, so hyper's header read timeout never fires, and a client
//! sending a byte a minute, or nothing at all, would hold its connection
//! forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use bytes::Bytes;
use ferry_core::connection_limit::ConnectionLimit;
use ferry_core::connections::{Connection, Connections};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// After a failed accept (e.g. out of file descriptors), wait before retrying
/// instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What a connection accepted past `connections_max` is told before it is
/// closed: clients and their SDKs retry a 503 with back-off.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n";

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections on the listener.
    pub connections_max: usize,
    /// How long a connection may take to send a request's head, counted
    /// from when the server starts waiting for it: right after the previous
    /// response on a keep-alive connection, so this is the idle timeout too.
    pub idle_timeout: Duration,
    /// How long a request's body may take to arrive, from its head.
    pub body_timeout: Duration,
}

/// Serves `router` on `listener` until the future is dropped. `name` (`sqs`,
/// `http`) is used in log lines and the limit's config key, and is the
/// protocol its connections are listed under in `registry` (client
/// connections are; the admin listener's own are not).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    registry: Option<Arc<Connections>>,
) {
    let limit = ConnectionLimit::new(name, limits.connections_max);
    let app = router.layer(axum::middleware::map_request_with_state(
        limits.body_timeout,
        with_body_deadline,
    ));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Some(slot) = limit.admit() else {
            refuse(socket);
            continue;
        };
        let local = socket.local_addr().unwrap_or(peer);
        let registration = registry.as_ref().map(|r| r.register(name, peer, local));
        let counted = registration.as_ref().map(|r| r.connection());
        let service = Counting {
            inner: TowerToHyperService::new(app.clone()),
            connection: counted.clone(),
        };
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle_timeout)
                .serve_connection(TokioIo::new(CountingIo::new(socket, counted)), service);
            let closed = async {
                match &registration {
                    Some(r) => r.close_requested().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                served = served => match served {
                    // Not HTTP: a protocol violation, worth an operator's
                    // line. Timeouts and clients going away are routine
                    // (an idle keep-alive connection ends on a timeout).
                    Err(e) if e.is_parse() => {
                        tracing::warn!(listener = name, %peer, error = %e, "closing {name} connection: not a valid HTTP/1.1 request");
                    }
                    Err(e) => tracing::debug!(listener = name, %peer, error = %e, "http connection ended"),
                    Ok(()) => {}
                },
                // An operator closed it (admin API): dropping the
                // connection closes the socket.
                reason = closed => {
                    tracing::info!(listener = name, %peer, "closing {name} connection: {reason}");
                }
            }
            drop(registration);
            drop(slot);
        });
    }
}

/// Counts a registered connection's requests and responses.
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    connection: Option<Arc<Connection>>,
}

impl<S, R> hyper::service::Service<R> for Counting<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        if let Some(c) = &self.connection {
            c.received(0, 1);
        }
        let answer = self.inner.call(request);
        let connection = self.connection.clone();
        Box::pin(async move {
            let response = answer.await;
            if let Some(c) = connection {
                c.sent(0, 1);
            }
            response
        })
    }
}

/// A socket that adds the bytes read and written to its registered
/// connection's counters.
struct CountingIo {
    socket: TcpStream,
    connection: Option<Arc<Connection>>,
}

impl CountingIo {
    fn new(socket: TcpStream, connection: Option<Arc<Connection>>) -> Self {
        CountingIo { socket, connection }
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.socket).poll_read(cx, buf);
        if let Some(c) = &self.connection {
            c.received((buf.filled().len() - before) as u64, 0);
        }
        polled
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.socket).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(c)) = (&polled, &self.connection) {
            c.sent(*n as u64, 0);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// Tells a connection over the limit that we are busy, if its send buffer
/// takes the few bytes at once (a fresh socket's does), and closes it.
fn refuse(socket: TcpStream) {
    let _ = socket.try_write(BUSY_RESPONSE);
}

async fn with_body_deadline(State(timeout): State<Duration>, request: Request) -> Request {
    request.map(|body| Body::new(DeadlineBody::new(body, timeout)))
}

/// A request body that fails once its deadline has passed, so a handler
/// reading it (and the connection) is not held by a client that sends the
/// body slowly or never.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let e = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the request body did not arrive within {} ms",
                    this.timeout.as_millis()
                ),
            );
            return Poll::Ready(Some(Err(axum::Error::new(e))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
