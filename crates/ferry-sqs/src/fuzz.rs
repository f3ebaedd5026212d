//! Entry points of the fuzz targets in `fuzz/`: the server's own request
//! parsers (JSON 1.0 and query protocol) and the message parameters a send
//! reads, run on arbitrary bytes with no listener or queues around them.
//! Not an API for anything else.

use axum::http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use crate::http::{parse_json, parse_query};
use crate::message::{check_body, md5_of_attributes, parse_attributes};
use crate::params::Params;

/// Splits the fuzz input at its first newline: what the HTTP request has
/// outside its body (a header or the URL's query), then the body.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// A JSON 1.0 request: the `X-Amz-Target` header, a newline, the body.
pub fn json(data: &[u8]) {
    let (target, body) = split(data);
    let mut headers = HeaderMap::new();
    if let Ok(target) = HeaderValue::from_bytes(target) {
        headers.insert("x-amz-target", target);
    }
    if let Ok((_, params)) = parse_json(&headers, body) {
        message_params(&params);
    }
}

/// A query-protocol POST: the URL's query string, a newline, the form body.
pub fn query(data: &[u8]) {
    let (query, body) = split(data);
    let query = String::from_utf8_lossy(query);
    if let Ok((_, params)) = parse_query(&Method::POST, Some(&query), body) {
        message_params(&params);
    }
}

/// What SendMessage and SendMessageBatch read of a message before it is
/// stored: body, attributes and their MD5, for the request and each entry.
fn message_params(params: &Params) {
    let entries = match params.get("Entries") {
        Some(Value::Array(entries)) => entries.iter().filter_map(Value::as_object).collect(),
        _ => Vec::new(),
    };
    for p in std::iter::once(params).chain(entries) {
        if let Some(Value::String(body)) = p.get("MessageBody") {
            drop(check_body(body));
        }
        for (name, system) in [
            ("MessageAttributes", false),
            ("MessageSystemAttributes", true),
        ] {
            if let Ok(attributes) = parse_attributes(p.get(name), system) {
                md5_of_attributes(&attributes);
            }
        }
    }
}
