//! Serving the SQS and admin routers over HTTP/1.1 with the limits every
//! Ferry listener has: a cap on open connections, a deadline for a
//! request's head (which is also how long an idle keep-alive connection is
//! kept), and a deadline for its body. `axum::serve` has none of these: it
//! sets no timer, so hyper's header read timeout never fires, and a client
//! sending a byte a minute, or nothing at all, would hold its connection
//! forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use bytes::Bytes;
use ferry_core::connection_limit::ConnectionLimit;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
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
/// `http`) is used in log lines and the limit's config key.
pub async fn serve(name: &'static str, listener: TcpListener, router: Router, limits: HttpLimits) {
    let limit = ConnectionLimit::new(name, limits.connections_max);
    let app = router.layer(axum::middleware::map_request_with_state(
        limits.body_timeout,
        with_body_deadline,
    ));
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
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
        let service = TowerToHyperService::new(app.clone());
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle_timeout)
                .serve_connection(TokioIo::new(socket), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(listener = name, error = %e, "http connection ended");
            }
            drop(slot);
        });
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
