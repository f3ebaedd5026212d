//! API errors: one JSON shape, `{"error": "<code>", "message": "<text>"}`,
//! with the HTTP status that goes with the code. Every domain error of
//! `ferry-core` is mapped here, in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_core::CoreError;
use serde_json::json;

/// An error answer of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A short, stable, machine-readable code (`not_found`, `bad_request`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code, "message": self.message});
        crate::json_response(self.status, &body)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        let message = e.to_string();
        match e {
            CoreError::UnknownTopic(_) | CoreError::UnknownPartition { .. } => {
                ApiError::not_found(message)
            }
            CoreError::TopicExists(_) => ApiError::conflict(message),
            CoreError::PartitionOffline { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            CoreError::InvalidTopicName { .. }
            | CoreError::InvalidPartitions(_)
            | CoreError::InvalidConfig { .. } => ApiError::bad_request(message),
            _ => ApiError::internal(message),
        }
    }
}

impl From<ferry_core::group::GroupError> for ApiError {
    fn from(e: ferry_core::group::GroupError) -> ApiError {
        use ferry_core::group::GroupError as G;
        let message = e.to_string();
        match e {
            G::GroupIdNotFound => ApiError::not_found(message),
            G::NonEmptyGroup | G::RebalanceInProgress | G::UnknownMemberId => {
                ApiError::conflict(message)
            }
            G::InvalidGroupId | G::OffsetMetadataTooLarge => ApiError::bad_request(message),
            G::CoordinatorNotAvailable => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            _ => ApiError::internal(message),
        }
    }
}

impl From<ferry_core::messaging::MessagingError> for ApiError {
    fn from(e: ferry_core::messaging::MessagingError) -> ApiError {
        use ferry_core::messaging::MessagingError as M;
        let message = e.to_string();
        match e {
            M::NotFound { .. } => ApiError::not_found(message),
            M::PreconditionFailed(_)
            | M::ResourceLocked(_)
            | M::QueueFull(_)
            | M::LimitReached(_) => ApiError::conflict(message),
            M::AccessRefused(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            M::InvalidArgument { .. } => ApiError::bad_request(message),
            M::Storage(_) => ApiError::internal(message),
        }
    }
}

/// A blocking job (disk work in `ferry-core`) that panicked.
pub(crate) fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::internal(format!("the operation failed unexpectedly: {e}"))
}
