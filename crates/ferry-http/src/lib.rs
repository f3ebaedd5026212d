//! Ferry's operations listener (`ferry serve --http-listen`): a JSON admin
//! API over the broker model of `ferry-core` (topics, consumer groups,
//! exchanges, queues, bindings, a message browser), its OpenAPI document at
//! `/api/openapi.json`, and `/metrics` for Prometheus. It also lists and
//! closes client connections.
//!
//! It holds no state of its own beyond the start time and the listener
//! addresses it reports: every answer is read from the broker when asked.
//! Nothing here speaks a client protocol. Changes need an admin user once
//! some are configured (`auth`); until then the listener binds loopback by
//! default.
//!
//! Where things are: `error` (the JSON error shape and the one mapping from
//! domain errors to statuses), `request` (query and body parsing with
//! limits), `overview` (`/api/overview`), `topics` (topics and the record
//! browser), `groups` (consumer groups, lag, offset resets), `messaging`
//! (vhosts, exchanges, queues, bindings, queue browsing), `connections`
//! (client connections of every protocol, closing one), `metrics`
//! (`/metrics`, HTTP request counting, the overview's message rates),
//! `rabbitmq` (RabbitMQ's management API subset under `/rabbitmq`),
//! `console` (the web console at `/`, assets embedded from `console/`),
//! `auth` (Basic authentication of changes once admin users are set).

mod auth;
mod connections;
mod console;
mod error;
mod groups;
mod messaging;
mod metrics;
mod overview;
mod rabbitmq;
mod request;
mod topics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use ferry_core::Broker;

pub use error::ApiError;
/// Samples the overview's message rates; the binary runs it beside the
/// listener that serves [`router`] (with its connection limits and timeouts).
pub use metrics::run_rates;

/// One listener of the broker, as the overview reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `kafka`, `amqp`, `sqs` or `http`.
    pub protocol: String,
    pub address: SocketAddr,
}

/// What the HTTP front end needs besides the broker.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Every listener of this broker (this one included), for the overview.
    pub listeners: Vec<Listener>,
    /// Users (and passwords) allowed to change things; when there are any,
    /// every request but a GET or HEAD needs one of them (HTTP Basic).
    pub admins: BTreeMap<String, String>,
}

/// The shared state of every handler.
#[derive(Debug)]
pub struct Admin {
    pub broker: Arc<Broker>,
    pub config: HttpConfig,
    pub started: Instant,
    pub rates: metrics::Rates,
}

impl Admin {
    pub fn new(broker: Arc<Broker>, config: HttpConfig) -> Arc<Admin> {
        Arc::new(Admin {
            broker,
            config,
            started: Instant::now(),
            rates: metrics::Rates::default(),
        })
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// Every route of the listener.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/style.css", get(console::style))
        .route("/api/overview", get(overview::get))
        .route("/api/openapi.json", get(openapi))
        .route("/api/topics", get(topics::list).post(topics::create))
        .route(
            "/api/topics/{name}",
            get(topics::get).delete(topics::delete),
        )
        .route("/api/topics/{name}/configs", patch(topics::alter_configs))
        .route(
            "/api/topics/{name}/partitions/{partition}/records",
            get(topics::records),
        )
        .route("/api/groups", get(groups::list))
        .route(
            "/api/groups/{group}",
            get(groups::get).delete(groups::delete),
        )
        .route(
            "/api/groups/{group}/reset-offsets",
            post(groups::reset_offsets),
        )
        .route("/api/vhosts", get(messaging::vhosts))
        .route("/api/exchanges", get(messaging::exchanges))
        .route("/api/exchanges/{vhost}/{name}", get(messaging::exchange))
        .route("/api/queues", get(messaging::queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(messaging::queue).delete(messaging::delete_queue),
        )
        .route("/api/queues/{vhost}/{name}/purge", post(messaging::purge))
        .route("/api/queues/{vhost}/{name}/messages", get(messaging::peek))
        .route(
            "/api/queues/{vhost}/{name}/redrive",
            post(messaging::redrive),
        )
        .route("/api/bindings", get(messaging::bindings))
        .route("/api/connections", get(connections::list))
        .route(
            "/api/connections/{id}",
            get(connections::get).delete(connections::close),
        )
        .route("/metrics", get(metrics::get))
        .route("/rabbitmq/api/overview", get(rabbitmq::overview))
        .route("/rabbitmq/api/queues", get(rabbitmq::queues))
        .route("/rabbitmq/api/exchanges", get(rabbitmq::exchanges))
        .route("/rabbitmq/api/connections", get(rabbitmq::connections))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            auth::require_admin,
        ))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            metrics::count_requests,
        ))
        .with_state(admin)
}

/// Largest request body the API reads (axum's default, made explicit).
const BODY_BYTES_MAX: usize = 2 * 1024 * 1024;

/// A body announced larger than `BODY_BYTES_MAX` is refused before any of
/// it is read; without this a client declaring 2 GiB would hold the
/// connection until it had sent 2 MiB, or until the body deadline.
async fn refuse_large_bodies(request: axum::extract::Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {BODY_BYTES_MAX} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("no such endpoint: {}", uri.path())).into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
    .into_response()
}

/// The OpenAPI 3.1 document of this API, written by hand beside the code
/// (the interop tests check every answer against it).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    let mut response = Response::new(Body::from(OPENAPI_JSON));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON body with `status`.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A 200 JSON answer.
pub(crate) fn ok(body: serde_json::Value) -> Result<Response> {
    Ok(json_response(StatusCode::OK, &body))
}
