//! The HTTP side: which protocol a request speaks, its parameters as one
//! JSON tree whatever the protocol, and the response or error in that
//! protocol.
//!
//! AWS JSON 1.0 (`X-Amz-Target: AmazonSQS.<Action>`) bodies are already in
//! the model's shape. Query-protocol forms (`Action=...&Attribute.1.Name=...`)
//! are folded into the same shape by [`form_to_json`], so every action is
//! written once, against the JSON shape; [`crate::xml`] renders results back
//! as the query protocol's XML.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::Sqs;
use crate::errors::{Code, SqsError, err};

pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.0";
const TARGET_PREFIX: &str = "AmazonSQS.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Query,
}

/// One parsed request.
#[derive(Debug)]
pub struct SqsRequest {
    pub protocol: Protocol,
    pub action: String,
    pub params: Map<String, Value>,
    /// The request's path (`/` or a queue URL's `/<account>/<name>`).
    pub path: String,
    /// The `Host` header, for queue URLs when no address is advertised.
    pub host: Option<String>,
}

/// What an action answers. Most actions build a `Value` in the JSON
/// protocol's shape; the message actions build typed structs
/// ([`SqsRequest::reply`]), which a JSON request gets serialised at once,
/// without a tree of maps per message to build and drop.
#[derive(Debug)]
pub enum Reply {
    Value(Value),
    Json(Vec<u8>),
}

impl SqsRequest {
    /// `result` in this request's protocol: JSON bytes, or for the query
    /// protocol the `Value` its XML is rendered from.
    pub fn reply(&self, result: &impl Serialize) -> Result<Reply, SqsError> {
        let reply = match self.protocol {
            Protocol::Json => {
                // A receive of ten messages is a few KiB.
                let mut out = Vec::with_capacity(1024);
                serde_json::to_writer(&mut out, result).map(|()| Reply::Json(out))
            }
            Protocol::Query => serde_json::to_value(result).map(Reply::Value),
        };
        reply.map_err(crate::errors::internal)
    }
}

/// Whether a request (before its body is read) is for the JSON protocol.
fn protocol_of(headers: &HeaderMap) -> Protocol {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-amz-json"));
    if headers.contains_key("x-amz-target") || json_type {
        Protocol::Json
    } else {
        Protocol::Query
    }
}

/// The axum handler for every path and method.
pub async fn handle(State(sqs): State<Arc<Sqs>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = request.into_parts();
    let protocol = protocol_of(&parts.headers);
    let limit = sqs.config.request_bytes_max;
    let too_large = || {
        err(
            Code::RequestTooLarge,
            format!("Request body must be at most {limit} bytes."),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return error_response(protocol, &too_large(), &request_id);
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        // The listener's body deadline passed: a client this slow gets a
        // bare 408 and loses its connection rather than an SQS error.
        Err(e) if timed_out(&e) => return request_timeout(),
        Err(_) => return error_response(protocol, &too_large(), &request_id),
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed = match protocol {
        Protocol::Json => parse_json(&parts.headers, &bytes),
        Protocol::Query => parse_query(&parts.method, parts.uri.query(), &bytes),
    };
    let (action, params) = match parsed {
        Ok(p) => p,
        Err(e) => return error_response(protocol, &e, &request_id),
    };
    let req = SqsRequest {
        protocol,
        action,
        params,
        path: parts.uri.path().to_string(),
        host,
    };
    let result = sqs.dispatch(&req).await;
    // Only actions SQS has are counted: the name is the client's string,
    // and each name would be a metric series of its own.
    if !matches!(&result, Err(e) if e.code == Code::InvalidAction) {
        let metrics = &sqs.config.metrics;
        metrics.request("sqs", req.action.clone(), started.elapsed());
    }
    match result {
        Ok(result) => ok_response(protocol, &req.action, result, &request_id),
        Err(e) => {
            if e.code == Code::InternalError {
                tracing::warn!(action = %req.action, error = %e.message, "sqs request failed");
            }
            error_response(protocol, &e, &request_id)
        }
    }
}

/// Whether reading a body failed on a deadline (an `io::Error` of kind
/// `TimedOut` somewhere in the chain).
fn timed_out(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn request_timeout() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(crate) fn parse_json(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Map<String, Value>), SqsError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(action) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(err(
            Code::InvalidAction,
            format!("The action or operation {target} is not valid for this endpoint."),
        ));
    };
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            err(
                Code::Serialization,
                format!("The request body is not valid JSON: {e}"),
            )
        })?
    };
    match value {
        Value::Object(map) => Ok((action.to_string(), map)),
        Value::Null => Ok((action.to_string(), Map::new())),
        _ => Err(err(
            Code::Serialization,
            "The request body must be a JSON object.",
        )),
    }
}

pub(crate) fn parse_query(
    method: &Method,
    query: Option<&str>,
    body: &[u8],
) -> Result<(String, Map<String, Value>), SqsError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(q) = query {
        pairs.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    if *method == Method::POST {
        pairs.extend(form_urlencoded::parse(body).into_owned());
    }
    let action = pairs
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone());
    let Some(action) = action else {
        return Err(err(
            Code::InvalidAction,
            "The request must contain the parameter Action.",
        ));
    };
    Ok((action, form_to_json(&pairs)))
}

/// Folds query-protocol pairs into the JSON protocol's shape:
/// `Attribute.N.Name/Value` → `Attributes` map, `Tag.N.Key/Value` → `Tags`,
/// `MessageAttribute.N.Name/Value.*` → `MessageAttributes`,
/// `AttributeName.N` → `AttributeNames` list, `*RequestEntry.N.*` →
/// `Entries`, and so on. The member names of the current model work too
/// (`Attributes.N.key/value`, `AttributeNames.N`, `Entries.N.*`): that is
/// what a current SDK sends when told to use the query protocol. Unknown
/// keys stay as they are.
pub fn form_to_json(pairs: &[(String, String)]) -> Map<String, Value> {
    let mut root = Map::new();
    for (k, v) in pairs {
        if k == "Action" || k == "Version" {
            continue;
        }
        insert_path(&mut root, &k.split('.').collect::<Vec<_>>(), v);
    }
    normalize(root)
}

fn insert_path(node: &mut Map<String, Value>, path: &[&str], value: &str) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        node.insert((*first).to_string(), Value::String(value.to_string()));
        return;
    }
    let child = node
        .entry((*first).to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        // `X=1` and `X.1=...` both given: the structured one wins.
        *child = Value::Object(Map::new());
    }
    if let Value::Object(m) = child {
        insert_path(m, rest, value);
    }
}

/// The numbered children of a node, in index order (a bare value counts as
/// the only item).
fn numbered(v: Value) -> Vec<Value> {
    match v {
        Value::Object(m) => {
            let mut items: Vec<(u64, Value)> = m
                .into_iter()
                .filter_map(|(k, v)| k.parse::<u64>().ok().map(|i| (i, v)))
                .collect();
            items.sort_by_key(|(i, _)| *i);
            items.into_iter().map(|(_, v)| v).collect()
        }
        other => vec![other],
    }
}

/// Whether a form node is a numbered list (`X.1`, `X.2`, ...).
fn is_numbered(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| !m.is_empty() && m.keys().all(|k| k.parse::<u64>().is_ok()))
}

fn field(v: &Value, name: &str) -> Option<Value> {
    v.get(name).cloned()
}

fn name_value_map(v: Value, key: &str, value: &str, nested: bool) -> Value {
    let mut out = Map::new();
    for item in numbered(v) {
        let Some(Value::String(k)) = field(&item, key) else {
            continue;
        };
        let val = field(&item, value).unwrap_or(Value::Null);
        let val = match val {
            Value::Object(m) if nested => Value::Object(normalize_attribute_value(m)),
            other => other,
        };
        out.insert(k, val);
    }
    Value::Object(out)
}

fn normalize_attribute_value(m: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in m {
        match k.as_str() {
            "StringListValue" | "StringListValues" => {
                out.insert("StringListValues".into(), Value::Array(numbered(v)));
            }
            "BinaryListValue" | "BinaryListValues" => {
                out.insert("BinaryListValues".into(), Value::Array(numbered(v)));
            }
            _ => {
                out.insert(k, v);
            }
        }
    }
    out
}

fn normalize(m: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in m {
        let (name, value) = match k.as_str() {
            "Attribute" => (
                "Attributes".to_string(),
                name_value_map(v, "Name", "Value", false),
            ),
            "MessageAttribute" => (
                "MessageAttributes".to_string(),
                name_value_map(v, "Name", "Value", true),
            ),
            "MessageSystemAttribute" => (
                "MessageSystemAttributes".to_string(),
                name_value_map(v, "Name", "Value", true),
            ),
            "Tag" => ("Tags".to_string(), name_value_map(v, "Key", "Value", false)),
            "AttributeName" => ("AttributeNames".to_string(), Value::Array(numbered(v))),
            "MessageAttributeName" => (
                "MessageAttributeNames".to_string(),
                Value::Array(numbered(v)),
            ),
            "MessageSystemAttributeName" => (
                "MessageSystemAttributeNames".to_string(),
                Value::Array(numbered(v)),
            ),
            "TagKey" => ("TagKeys".to_string(), Value::Array(numbered(v))),
            "AWSAccountId" => ("AWSAccountIds".to_string(), Value::Array(numbered(v))),
            "ActionName" => ("Actions".to_string(), Value::Array(numbered(v))),
            "Attributes" | "Tags" | "tags" if is_numbered(&v) => {
                (k.clone(), name_value_map(v, "key", "value", false))
            }
            "MessageAttributes" | "MessageSystemAttributes" if is_numbered(&v) => {
                (k.clone(), name_value_map(v, "key", "value", true))
            }
            "AttributeNames"
            | "MessageAttributeNames"
            | "MessageSystemAttributeNames"
            | "TagKeys"
            | "AWSAccountIds"
            | "Actions"
                if is_numbered(&v) =>
            {
                (k.clone(), Value::Array(numbered(v)))
            }
            _ if k.ends_with("RequestEntry") || (k == "Entries" && is_numbered(&v)) => {
                let entries = numbered(v)
                    .into_iter()
                    .map(|e| match e {
                        Value::Object(m) => Value::Object(normalize(m)),
                        other => other,
                    })
                    .collect();
                ("Entries".to_string(), Value::Array(entries))
            }
            _ => (k, v),
        };
        out.insert(name, value);
    }
    out
}

fn ok_response(protocol: Protocol, action: &str, result: Reply, request_id: &str) -> Response {
    let (content_type, body) = match (protocol, result) {
        (_, Reply::Json(body)) => (JSON_CONTENT_TYPE, body),
        (Protocol::Json, Reply::Value(v)) => (
            JSON_CONTENT_TYPE,
            serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec()),
        ),
        (Protocol::Query, Reply::Value(v)) => (
            "text/xml",
            crate::xml::response(action, &v, request_id).into_bytes(),
        ),
    };
    build(StatusCode::OK, content_type, body, request_id, None)
}

pub fn error_response(protocol: Protocol, e: &SqsError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let query_error = format!("{};{}", e.code.query_code(), e.code.fault());
    let (content_type, body) = match protocol {
        Protocol::Json => {
            let mut m = Map::new();
            m.insert("__type".into(), Value::String(e.code.json_type().into()));
            m.insert("message".into(), Value::String(e.message.clone()));
            (
                JSON_CONTENT_TYPE,
                serde_json::to_vec(&Value::Object(m)).unwrap_or_default(),
            )
        }
        Protocol::Query => ("text/xml", crate::xml::error(e, request_id).into_bytes()),
    };
    build(status, content_type, body, request_id, Some(query_error))
}

fn build(
    status: StatusCode,
    content_type: &str,
    body: Vec<u8>,
    request_id: &str,
    query_error: Option<String>,
) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(static_type(content_type)),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if let Some(q) = query_error
        && let Ok(v) = HeaderValue::from_str(&q)
    {
        h.insert("x-amzn-query-error", v);
    }
    response
}

fn static_type(t: &str) -> &'static str {
    if t == JSON_CONTENT_TYPE {
        JSON_CONTENT_TYPE
    } else {
        "text/xml"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_forms_fold_into_the_json_shape() {
        let m = form_to_json(&pairs(&[
            ("Action", "SendMessageBatch"),
            ("QueueUrl", "http://h/1/q"),
            ("SendMessageBatchRequestEntry.2.Id", "b"),
            ("SendMessageBatchRequestEntry.1.Id", "a"),
            ("SendMessageBatchRequestEntry.1.MessageBody", "x"),
            (
                "SendMessageBatchRequestEntry.1.MessageAttribute.1.Name",
                "n",
            ),
            (
                "SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType",
                "String",
            ),
            (
                "SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue",
                "v",
            ),
            ("Attribute.1.Name", "VisibilityTimeout"),
            ("Attribute.1.Value", "5"),
            ("AttributeName.2", "B"),
            ("AttributeName.1", "A"),
            ("Tag.1.Key", "k"),
            ("Tag.1.Value", "tv"),
        ]));
        let v = Value::Object(m);
        assert_eq!(v["QueueUrl"], "http://h/1/q");
        assert_eq!(v["Entries"][0]["Id"], "a");
        assert_eq!(v["Entries"][1]["Id"], "b");
        assert_eq!(
            v["Entries"][0]["MessageAttributes"]["n"]["StringValue"],
            "v"
        );
        assert_eq!(v["Attributes"]["VisibilityTimeout"], "5");
        assert_eq!(v["AttributeNames"], serde_json::json!(["A", "B"]));
        assert_eq!(v["Tags"]["k"], "tv");
        assert!(v.get("Action").is_none());
        let m = form_to_json(&pairs(&[
            ("Attributes.1.key", "DelaySeconds"),
            ("Attributes.1.value", "5"),
            ("tags.1.key", "t"),
            ("tags.1.value", "1"),
            ("AttributeNames.1", "All"),
            ("Entries.1.Id", "a"),
            ("Entries.1.MessageAttributes.1.key", "s"),
            ("Entries.1.MessageAttributes.1.value.DataType", "String"),
            ("Entries.1.MessageAttributes.1.value.StringValue", "x"),
        ]));
        let v = Value::Object(m);
        assert_eq!(v["Attributes"]["DelaySeconds"], "5");
        assert_eq!(v["tags"]["t"], "1");
        assert_eq!(v["AttributeNames"], serde_json::json!(["All"]));
        assert_eq!(
            v["Entries"][0]["MessageAttributes"]["s"]["StringValue"],
            "x"
        );
    }
}
