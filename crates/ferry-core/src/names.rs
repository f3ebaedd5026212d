//! Validation of names that become paths on disk. A name is checked here
//! before it is ever joined to the data directory, so that no request can
//! reach a path outside it.

use crate::CoreError;

/// Kafka's limit, so that `<name>-<partition>` fits in a 255-byte file name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Kafka's rules for topic names: 1 to 249 characters from `[a-zA-Z0-9._-]`,
/// and neither `.` nor `..`.
pub fn validate_topic_name(name: &str) -> Result<(), CoreError> {
    let invalid = |reason: &str| {
        Err(CoreError::InvalidTopicName {
            name: name.chars().take(TOPIC_NAME_BYTES_MAX + 1).collect(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are not allowed");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return invalid("the name is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Kafka refuses a topic whose name differs from an existing one only by `.`
/// versus `_`, because both map to the same metric name.
pub fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kafka_names() {
        for ok in ["a", "orders", "my.topic-1_x", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
    }

    #[test]
    fn refuses_names_that_could_escape_the_data_dir() {
        for bad in [
            "",
            ".",
            "..",
            "../../etc",
            "a/b",
            "/abs",
            "a\\b",
            "nul\0",
            "spaces here",
            "ünïcode",
            &"x".repeat(250),
        ] {
            assert!(
                matches!(
                    validate_topic_name(bad),
                    Err(CoreError::InvalidTopicName { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn dots_and_underscores_collide() {
        assert_eq!(collision_key("a.b"), collision_key("a_b"));
        assert_ne!(collision_key("a.b"), collision_key("ab"));
    }
}
