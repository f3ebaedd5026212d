//! Who may change things: once admin users are configured
//! (`[http.admins]` in ferry.toml), every request that is not a GET or HEAD
//! must carry one of them with HTTP Basic authentication, or it is refused
//! with 401 before its handler runs. Reading stays open, as before users
//! existed; with no users the listener is meant to stay on loopback.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::{Admin, ApiError};

pub async fn require_admin(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    let admins = &admin.config.admins;
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if reads || admins.is_empty() || is_admin(admins, request.headers()) {
        return next.run(request).await;
    }
    let mut refused = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "changes need an admin user's name and password (HTTP Basic)",
    )
    .into_response();
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferry\", charset=\"UTF-8\""),
    );
    refused
}

/// Whether the request's `Authorization: Basic` names a configured admin
/// with the right password.
fn is_admin(
    admins: &std::collections::BTreeMap<String, String>,
    headers: &axum::http::HeaderMap,
) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(credentials) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = credentials.split_once(':') else {
        return false;
    };
    admins
        .get(user)
        .is_some_and(|expected| constant_time_eq(expected.as_bytes(), password.as_bytes()))
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guessed password was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_checked() {
        let admins = [("alice".to_string(), "s3cret".to_string())].into();
        let with = |value: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")),
            );
            is_admin(&admins, &h)
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(with(&format!("Basic {}", b64("alice:s3cret"))));
        assert!(!with(&format!("Basic {}", b64("alice:s3cre"))));
        assert!(!with(&format!("Basic {}", b64("bob:s3cret"))));
        assert!(!with("Basic !!!"));
        assert!(!with(&format!("Bearer {}", b64("alice:s3cret"))));
        assert!(!is_admin(&admins, &axum::http::HeaderMap::new()));
    }
}
