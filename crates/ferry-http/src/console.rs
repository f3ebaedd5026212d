//! The web console: a page and its script and style, embedded in the binary
//! and served at `/` by the admin listener. It is plain HTML, JavaScript and
//! CSS (no build step): the script reads the JSON API the way any client
//! would, so the console can do nothing the API does not offer.

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const STYLE_CSS: &str = include_str!("console/style.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary only; revalidating each load keeps
    // a browser from running an old script against a new API.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

pub async fn script() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}
