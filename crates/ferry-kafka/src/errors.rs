//! The one place where broker and storage errors become Kafka error codes.

use ferry_core::CoreError;
use ferry_core::group::GroupError;
use ferry_log::LogError;
use ferry_log::batch::BatchError;
use kafka_protocol::ResponseError;
use kafka_protocol::protocol::StrBytes;

/// The Kafka error for a broker error.
pub(crate) fn kafka_error(e: &CoreError) -> ResponseError {
    match e {
        CoreError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        CoreError::UnknownTopic(_) | CoreError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        CoreError::UnknownTopicId(_) => ResponseError::UnknownTopicId,
        CoreError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        CoreError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        CoreError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        CoreError::InvalidConfig { .. } => ResponseError::InvalidConfig,
        CoreError::Log(log) => log_error(log),
        // What Kafka answers for a partition of a failed log directory.
        CoreError::PartitionOffline { .. }
        | CoreError::Catalog { .. }
        | CoreError::DataDirLocked(_) => ResponseError::KafkaStorageError,
        // Kafka's answer when its block of producer ids is not available
        // (yet): clients retry InitProducerId.
        CoreError::ProducerIds { .. } => ResponseError::CoordinatorLoadInProgress,
    }
}

pub(crate) fn log_error(e: &LogError) -> ResponseError {
    match e {
        LogError::InvalidBatch(b) => match b {
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
            BatchError::UnsupportedCompression(_) => ResponseError::UnsupportedCompressionType,
            BatchError::InvalidRecordCount { .. }
            | BatchError::ControlBatch
            | BatchError::InvalidSequence { .. } => ResponseError::InvalidRecord,
            BatchError::Empty
            | BatchError::Truncated { .. }
            | BatchError::LengthTooSmall(_)
            | BatchError::UnsupportedMagic(_)
            | BatchError::CrcMismatch { .. } => ResponseError::CorruptMessage,
        },
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        // What Kafka answers a Fetch that finds a damaged batch: the Java
        // consumer raises it naming the offset, librdkafka hands it to the
        // application as a consumer error (KAFKA_STORAGE_ERROR would make
        // both look for another leader, silently, for ever).
        LogError::CorruptBatch { .. } => ResponseError::CorruptMessage,
        // Newer Produce versions keep INVALID_PRODUCER_EPOCH (47) for
        // idempotent producers; PRODUCER_FENCED is for transactional ones.
        LogError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        LogError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        LogError::Io { .. } | LogError::CorruptSegment { .. } | LogError::NotDurable => {
            ResponseError::KafkaStorageError
        }
    }
}

pub(crate) fn group_error(e: &GroupError) -> ResponseError {
    match e {
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        // Retriable: the client tries again, as after a coordinator move.
        GroupError::Storage(_) => ResponseError::CoordinatorNotAvailable,
    }
}

pub(crate) fn message(e: &impl std::fmt::Display) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.to_string()))
}
