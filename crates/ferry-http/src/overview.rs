//! `GET /api/overview`: what this broker is.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::json;

use crate::{Admin, Result, ok};

pub async fn get(State(admin): State<Arc<Admin>>) -> Result<Response> {
    let listeners: Vec<_> = admin
        .config
        .listeners
        .iter()
        .map(|l| json!({"protocol": l.protocol, "address": l.address.to_string()}))
        .collect();
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "cluster_id": admin.broker.cluster_id(),
        "uptime_ms": admin.started.elapsed().as_millis() as u64,
        "listeners": listeners,
    }))
}
