//! The query protocol's XML responses, written by hand (a dozen element
//! shapes do not need an XML library): results in the JSON protocol's
//! shape are rendered with the 2012-11-05 model's flattened list and map
//! element names.

use serde_json::Value;

use crate::errors::SqsError;

pub const NAMESPACE: &str = "http://queue.amazonaws.com/doc/2012-11-05/";

/// Actions whose response has no `<...Result>` element.
const NO_RESULT: &[&str] = &[
    "DeleteQueue",
    "SetQueueAttributes",
    "PurgeQueue",
    "DeleteMessage",
    "ChangeMessageVisibility",
    "TagQueue",
    "UntagQueue",
    "AddPermission",
    "RemovePermission",
];

/// Escapes text for element content. Carriage returns are escaped too, or
/// XML parsers would turn them into line feeds; characters XML 1.0 cannot
/// carry at all become U+FFFD.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

fn element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    escape(text, out);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list_element(action: &str, key: &str) -> String {
    match key {
        "QueueUrls" | "queueUrls" => "QueueUrl".into(),
        "Messages" => "Message".into(),
        "Failed" => "BatchResultErrorEntry".into(),
        "Successful" => format!("{action}ResultEntry"),
        "Results" => format!("{action}ResultEntry"),
        "StringListValues" => "StringListValue".into(),
        "BinaryListValues" => "BinaryListValue".into(),
        other => other.to_string(),
    }
}

/// Renders the members of a result structure.
fn members(out: &mut String, action: &str, v: &Value) {
    let Value::Object(m) = v else {
        return;
    };
    for (k, v) in m {
        match (k.as_str(), v) {
            ("Attributes", Value::Object(attrs)) => {
                for (name, value) in attrs {
                    out.push_str("<Attribute>");
                    element(out, "Name", name);
                    element(out, "Value", &scalar_text(value).unwrap_or_default());
                    out.push_str("</Attribute>");
                }
            }
            ("Tags", Value::Object(tags)) => {
                for (key, value) in tags {
                    out.push_str("<Tag>");
                    element(out, "Key", key);
                    element(out, "Value", &scalar_text(value).unwrap_or_default());
                    out.push_str("</Tag>");
                }
            }
            ("MessageAttributes", Value::Object(attrs)) => {
                for (name, value) in attrs {
                    out.push_str("<MessageAttribute>");
                    element(out, "Name", name);
                    out.push_str("<Value>");
                    members(out, action, value);
                    out.push_str("</Value></MessageAttribute>");
                }
            }
            (_, Value::Array(items)) => {
                let name = list_element(action, k);
                for item in items {
                    match scalar_text(item) {
                        Some(t) => element(out, &name, &t),
                        None => {
                            out.push('<');
                            out.push_str(&name);
                            out.push('>');
                            members(out, action, item);
                            out.push_str("</");
                            out.push_str(&name);
                            out.push('>');
                        }
                    }
                }
            }
            (_, Value::Object(_)) => {
                out.push('<');
                out.push_str(k);
                out.push('>');
                members(out, action, v);
                out.push_str("</");
                out.push_str(k);
                out.push('>');
            }
            (_, Value::Null) => {}
            (_, scalar) => element(out, k, &scalar_text(scalar).unwrap_or_default()),
        }
    }
}

/// A whole successful response.
pub fn response(action: &str, result: &Value, request_id: &str) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\"?>");
    out.push_str(&format!("<{action}Response xmlns=\"{NAMESPACE}\">"));
    let empty = result.as_object().is_none_or(|m| m.is_empty());
    if !(empty && NO_RESULT.contains(&action)) {
        out.push_str(&format!("<{action}Result>"));
        members(&mut out, action, result);
        out.push_str(&format!("</{action}Result>"));
    }
    out.push_str("<ResponseMetadata>");
    element(&mut out, "RequestId", request_id);
    out.push_str(&format!("</ResponseMetadata></{action}Response>"));
    out
}

/// An `<ErrorResponse>`.
pub fn error(e: &SqsError, request_id: &str) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\"?>");
    out.push_str(&format!("<ErrorResponse xmlns=\"{NAMESPACE}\"><Error>"));
    element(&mut out, "Type", e.code.fault());
    element(&mut out, "Code", e.code.query_code());
    element(&mut out, "Message", &e.message);
    out.push_str("<Detail/></Error>");
    element(&mut out, "RequestId", request_id);
    out.push_str("</ErrorResponse>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_use_the_flattened_element_names() {
        let r = json!({
            "Messages": [{
                "MessageId": "m",
                "Body": "a<b\r",
                "Attributes": {"SentTimestamp": "1"},
                "MessageAttributes": {"n": {"DataType": "String", "StringValue": "v"}}
            }]
        });
        let x = response("ReceiveMessage", &r, "rid");
        for part in [
            "<ReceiveMessageResult><Message>",
            "<MessageId>m</MessageId>",
            "<Body>a&lt;b&#xD;</Body>",
            "<Attribute><Name>SentTimestamp</Name><Value>1</Value></Attribute>",
            "<MessageAttribute><Name>n</Name><Value><DataType>String</DataType><StringValue>v</StringValue></Value></MessageAttribute>",
        ] {
            assert!(x.contains(part), "{part} not in {x}");
        }
        let x = response("DeleteQueue", &json!({}), "rid");
        assert!(!x.contains("DeleteQueueResult"), "{x}");
        let x = response(
            "SendMessageBatch",
            &json!({"Successful": [{"Id": "a"}], "Failed": []}),
            "r",
        );
        assert!(
            x.contains("<SendMessageBatchResultEntry><Id>a</Id></SendMessageBatchResultEntry>"),
            "{x}"
        );
    }
}
