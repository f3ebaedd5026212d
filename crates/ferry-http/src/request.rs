//! Reading requests: query parameters and JSON bodies, each value checked
//! against its limits so that bad input is a 400 with a clear message.

use std::collections::BTreeMap;

use axum::http::Uri;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::ApiError;

/// The query string's parameters (the last of a repeated name wins).
pub fn query(uri: &Uri) -> BTreeMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// An integer query parameter within `[min, max]`, or `default` if absent.
pub fn int_param(
    query: &BTreeMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let Some(text) = query.get(name) else {
        return Ok(default);
    };
    match text.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "query parameter '{name}' must be a whole number from {min} to {max}, not '{text}'"
        ))),
    }
}

/// A request body that must be a JSON object (an empty body is `{}`).
pub fn json_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// A field that must be a string when present.
pub fn opt_str<'a>(body: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("'{name}' must be a string"))),
    }
}

/// A field that must be a whole number within `[min, max]` when present.
pub fn opt_int(
    body: &Map<String, Value>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "'{name}' must be a whole number from {min} to {max}"
            ))),
        },
    }
}

/// A field that must be a boolean when present.
pub fn opt_bool(body: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_request(format!(
            "'{name}' must be true or false"
        ))),
    }
}

/// A map of config names to values (strings, numbers or booleans, as
/// Kafka admin tools and TOML files write them).
pub fn config_map(
    body: &Map<String, Value>,
    name: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    match body.get(name) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "'{name}.{k}' must be a string, number or boolean"
                        )));
                    }
                };
                out.insert(k.clone(), v);
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "'{name}' must be an object of config names to values"
            )));
        }
    }
    Ok(out)
}

/// Bytes for JSON: UTF-8 text as is, anything else as base64, with the
/// encoding named beside it so that nothing is lost or guessed.
pub fn bytes_json(bytes: Option<&[u8]>) -> (Value, &'static str) {
    use base64::Engine as _;
    match bytes {
        None => (Value::Null, "null"),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => (Value::String(s.to_string()), "utf8"),
            Err(_) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
                "base64",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn int_params_are_bounded() {
        let uri: Uri = "/x?limit=5&offset=-3&bad=1e3".parse().unwrap();
        let q = query(&uri);
        assert_eq!(int_param(&q, "limit", 20, 1, 10).unwrap(), 5);
        assert_eq!(int_param(&q, "missing", 20, 1, 10).unwrap(), 20);
        assert_eq!(int_param(&q, "offset", 0, -5, 5).unwrap(), -3);
        let e = int_param(&q, "bad", 0, 0, 10).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("'bad'") && e.message.contains("1e3"),
            "{}",
            e.message
        );
        assert!(int_param(&q, "limit", 20, 6, 10).is_err());
    }

    #[test]
    fn bodies_must_be_objects_with_typed_fields() {
        assert!(json_object(&Bytes::from_static(b"  ")).unwrap().is_empty());
        assert!(json_object(&Bytes::from_static(b"[]")).is_err());
        assert!(json_object(&Bytes::from_static(b"{")).is_err());
        let body = json_object(&Bytes::from_static(
            br#"{"n": 3, "s": "x", "b": true, "c": {"a": 1, "b": "2", "c": false}, "bad": {"a": []}}"#,
        ))
        .unwrap();
        assert_eq!(opt_int(&body, "n", 1, 3).unwrap(), Some(3));
        assert!(opt_int(&body, "n", 4, 5).is_err());
        assert!(opt_int(&body, "s", 0, 5).is_err());
        assert_eq!(opt_str(&body, "s").unwrap(), Some("x"));
        assert!(opt_str(&body, "n").is_err());
        assert_eq!(opt_bool(&body, "b").unwrap(), Some(true));
        assert_eq!(opt_bool(&body, "missing").unwrap(), None);
        let c = config_map(&body, "c").unwrap();
        assert_eq!(c["a"], "1");
        assert_eq!(c["b"], "2");
        assert_eq!(c["c"], "false");
        assert!(config_map(&body, "bad").is_err());
        assert!(config_map(&body, "s").is_err());
    }

    #[test]
    fn bytes_are_text_when_they_can_be() {
        assert_eq!(bytes_json(None), (Value::Null, "null"));
        assert_eq!(
            bytes_json(Some(b"hi")),
            (Value::String("hi".into()), "utf8")
        );
        assert_eq!(
            bytes_json(Some(&[0xff, 0x00])),
            (Value::String("/wA=".into()), "base64")
        );
    }
}
