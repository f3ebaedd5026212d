//! Reading request parameters from the JSON-shaped parameter tree. Numbers
//! and booleans are accepted as JSON values (JSON protocol) or strings
//! (query protocol).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::errors::{Code, SqsResult, err, invalid_value, missing};

pub type Params = Map<String, Value>;

pub fn opt_str<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.get(name).and_then(Value::as_str)
}

pub fn req_str<'a>(p: &'a Params, name: &str) -> SqsResult<&'a str> {
    match p.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(missing(name)),
    }
}

pub fn opt_int(p: &Params, name: &str) -> SqsResult<Option<i64>> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid_value(name, n, "Must be an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| invalid_value(name, s, "Must be an integer")),
        Some(other) => Err(invalid_value(name, other, "Must be an integer")),
    }
}

/// An integer parameter within `[min, max]`, with SQS's wording when not.
pub fn int_in(p: &Params, name: &str, min: i64, max: i64) -> SqsResult<Option<i64>> {
    match opt_int(p, name)? {
        Some(v) if v < min || v > max => Err(invalid_value(
            name,
            v,
            &format!("Must be between {min} and {max}, if provided"),
        )),
        other => Ok(other),
    }
}

pub fn string_list(p: &Params, name: &str) -> Vec<String> {
    match p.get(name) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn string_map(p: &Params, name: &str) -> SqsResult<BTreeMap<String, String>> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                scalar(v)
                    .map(|s| (k.clone(), s))
                    .ok_or_else(|| invalid_value(name, k, "Values must be strings"))
            })
            .collect(),
        Some(_) => Err(err(
            Code::InvalidParameterValue,
            format!("{name} must be a map of strings."),
        )),
    }
}

/// The entries of a batch request, with SQS's batch rules: at least one,
/// at most ten, ids of `[A-Za-z0-9_-]{1,80}`, all distinct.
pub fn batch_entries<'a>(p: &'a Params, entry_name: &str) -> SqsResult<Vec<&'a Params>> {
    let entries: Vec<&Params> = match p.get("Entries") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_object).collect(),
        _ => Vec::new(),
    };
    if entries.is_empty() {
        return Err(err(
            Code::EmptyBatchRequest,
            format!("There should be at least one {entry_name} in the request."),
        ));
    }
    if entries.len() > crate::BATCH_ENTRIES_MAX {
        return Err(err(
            Code::TooManyEntriesInBatchRequest,
            format!(
                "Maximum number of entries per request are {}. You have sent {}.",
                crate::BATCH_ENTRIES_MAX,
                entries.len()
            ),
        ));
    }
    // At most ten ids: comparing with the earlier ones is cheaper than
    // hashing.
    let mut ids: Vec<&str> = Vec::with_capacity(entries.len());
    for e in &entries {
        let id = opt_str(e, "Id").unwrap_or("");
        let valid = !id.is_empty()
            && id.len() <= 80
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(err(
                Code::InvalidBatchEntryId,
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long.",
            ));
        }
        if ids.contains(&id) {
            return Err(err(
                Code::BatchEntryIdsNotDistinct,
                format!("Id {id} repeated."),
            ));
        }
        ids.push(id);
    }
    Ok(entries)
}
