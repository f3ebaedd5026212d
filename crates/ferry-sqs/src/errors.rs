//! SQS errors as SQS sends them: one enum, and in one place the HTTP status,
//! the JSON `__type` (the model's shape name), and the query-protocol code
//! that goes into `<Error><Code>` and the `x-amzn-query-error` header
//! (botocore takes the error code from that header).

use ferry_core::messaging::MessagingError;

/// An SQS error: a code and SQS's message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct SqsError {
    pub code: Code,
    pub message: String,
}

/// Every error code the front end answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    QueueDoesNotExist,
    QueueNameExists,
    QueueDeletedRecently,
    PurgeQueueInProgress,
    InvalidParameterValue,
    MissingParameter,
    ReceiptHandleIsInvalid,
    MessageNotInflight,
    InvalidAttributeName,
    InvalidAttributeValue,
    InvalidMessageContents,
    TooManyEntriesInBatchRequest,
    BatchEntryIdsNotDistinct,
    EmptyBatchRequest,
    InvalidBatchEntryId,
    BatchRequestTooLong,
    OverLimit,
    /// Sends during a resource alarm (botocore retries it with backoff).
    RequestThrottled,
    UnsupportedOperation,
    ResourceNotFound,
    InvalidAction,
    /// The JSON body could not be parsed.
    Serialization,
    /// The request body is larger than the front end accepts.
    RequestTooLarge,
    InternalError,
}

impl Code {
    /// The query-protocol code (`<Code>`, and the first part of
    /// `x-amzn-query-error`).
    pub fn query_code(self) -> &'static str {
        match self {
            Code::QueueDoesNotExist => "AWS.SimpleQueueService.NonExistentQueue",
            Code::QueueNameExists => "QueueAlreadyExists",
            Code::QueueDeletedRecently => "AWS.SimpleQueueService.QueueDeletedRecently",
            Code::PurgeQueueInProgress => "AWS.SimpleQueueService.PurgeQueueInProgress",
            Code::InvalidParameterValue => "InvalidParameterValue",
            Code::MissingParameter => "MissingParameter",
            Code::ReceiptHandleIsInvalid => "ReceiptHandleIsInvalid",
            Code::MessageNotInflight => "AWS.SimpleQueueService.MessageNotInflight",
            Code::InvalidAttributeName => "InvalidAttributeName",
            Code::InvalidAttributeValue => "InvalidAttributeValue",
            Code::InvalidMessageContents => "InvalidMessageContents",
            Code::TooManyEntriesInBatchRequest => {
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
            }
            Code::BatchEntryIdsNotDistinct => "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            Code::EmptyBatchRequest => "AWS.SimpleQueueService.EmptyBatchRequest",
            Code::InvalidBatchEntryId => "AWS.SimpleQueueService.InvalidBatchEntryId",
            Code::BatchRequestTooLong => "AWS.SimpleQueueService.BatchRequestTooLong",
            Code::OverLimit => "OverLimit",
            Code::RequestThrottled => "RequestThrottled",
            Code::UnsupportedOperation => "AWS.SimpleQueueService.UnsupportedOperation",
            Code::ResourceNotFound => "ResourceNotFoundException",
            Code::InvalidAction => "InvalidAction",
            Code::Serialization => "SerializationException",
            Code::RequestTooLarge => "RequestEntityTooLarge",
            Code::InternalError => "InternalError",
        }
    }

    /// The JSON protocol's `__type`: the model's error shape for modeled
    /// errors, `com.amazonaws.sqs#<query code>` for the common ones, and
    /// the coral service errors for protocol-level failures.
    pub fn json_type(self) -> &'static str {
        match self {
            Code::QueueDoesNotExist => "com.amazonaws.sqs#QueueDoesNotExist",
            Code::QueueNameExists => "com.amazonaws.sqs#QueueNameExists",
            Code::QueueDeletedRecently => "com.amazonaws.sqs#QueueDeletedRecently",
            Code::PurgeQueueInProgress => "com.amazonaws.sqs#PurgeQueueInProgress",
            Code::InvalidParameterValue => "com.amazonaws.sqs#InvalidParameterValue",
            Code::MissingParameter => "com.amazonaws.sqs#MissingParameter",
            Code::ReceiptHandleIsInvalid => "com.amazonaws.sqs#ReceiptHandleIsInvalid",
            Code::MessageNotInflight => "com.amazonaws.sqs#MessageNotInflight",
            Code::InvalidAttributeName => "com.amazonaws.sqs#InvalidAttributeName",
            Code::InvalidAttributeValue => "com.amazonaws.sqs#InvalidAttributeValue",
            Code::InvalidMessageContents => "com.amazonaws.sqs#InvalidMessageContents",
            Code::TooManyEntriesInBatchRequest => "com.amazonaws.sqs#TooManyEntriesInBatchRequest",
            Code::BatchEntryIdsNotDistinct => "com.amazonaws.sqs#BatchEntryIdsNotDistinct",
            Code::EmptyBatchRequest => "com.amazonaws.sqs#EmptyBatchRequest",
            Code::InvalidBatchEntryId => "com.amazonaws.sqs#InvalidBatchEntryId",
            Code::BatchRequestTooLong => "com.amazonaws.sqs#BatchRequestTooLong",
            Code::OverLimit => "com.amazonaws.sqs#OverLimit",
            Code::RequestThrottled => "com.amazonaws.sqs#RequestThrottled",
            Code::UnsupportedOperation => "com.amazonaws.sqs#UnsupportedOperation",
            Code::ResourceNotFound => "com.amazonaws.sqs#ResourceNotFoundException",
            Code::InvalidAction => "com.amazon.coral.service#UnknownOperationException",
            Code::Serialization => "com.amazon.coral.service#SerializationException",
            Code::RequestTooLarge => "com.amazonaws.sqs#RequestEntityTooLarge",
            Code::InternalError => "com.amazon.coral.service#InternalFailure",
        }
    }

    /// The HTTP status SQS answers with.
    pub fn status(self) -> u16 {
        match self {
            // As the 2012-11-05 model has them (UnsupportedOperation: 400).
            Code::OverLimit | Code::PurgeQueueInProgress => 403,
            Code::ReceiptHandleIsInvalid | Code::ResourceNotFound => 404,
            Code::RequestTooLarge => 413,
            Code::InternalError => 500,
            _ => 400,
        }
    }

    /// `Sender` or `Receiver` (whose fault).
    pub fn fault(self) -> &'static str {
        match self {
            Code::InternalError => "Receiver",
            _ => "Sender",
        }
    }
}

pub type SqsResult<T> = Result<T, SqsError>;

pub fn err(code: Code, message: impl Into<String>) -> SqsError {
    SqsError {
        code,
        message: message.into(),
    }
}

pub fn no_queue() -> SqsError {
    err(
        Code::QueueDoesNotExist,
        "The specified queue does not exist.",
    )
}

pub fn missing(param: &str) -> SqsError {
    err(
        Code::MissingParameter,
        format!("The request must contain the parameter {param}."),
    )
}

/// SQS's wording for a parameter out of its range or shape.
pub fn invalid_value(param: &str, value: impl std::fmt::Display, reason: &str) -> SqsError {
    err(
        Code::InvalidParameterValue,
        format!("Value {value} for parameter {param} is invalid. Reason: {reason}."),
    )
}

pub fn invalid_parameters(reason: impl std::fmt::Display) -> SqsError {
    err(
        Code::InvalidParameterValue,
        format!("One or more parameters are invalid. Reason: {reason}"),
    )
}

pub fn internal(e: impl std::fmt::Display) -> SqsError {
    err(Code::InternalError, e.to_string())
}

impl From<MessagingError> for SqsError {
    fn from(e: MessagingError) -> Self {
        match e {
            MessagingError::NotFound { .. } => no_queue(),
            MessagingError::QueueFull(_) | MessagingError::LimitReached(_) => {
                err(Code::OverLimit, e.to_string())
            }
            MessagingError::Storage(_) => internal(e),
            other => err(Code::InvalidParameterValue, other.to_string()),
        }
    }
}
