//! The APIs and versions this broker implements, and the ApiVersions request.
//!
//! Clients infer the broker's release from the version ranges it advertises
//! (kafka-python does so explicitly), so the maxima below are exactly Apache
//! Kafka 3.7's for these APIs. The minima are where the `kafka-protocol`
//! crate starts (it dropped what Kafka 4.0 removed), as Kafka 4.0 does too.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::Decodable;

use crate::handlers::{Outcome, encode_response};

/// (API, lowest version, highest version) for every implemented API.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 10),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 4),
];

pub(crate) fn is_supported(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED_APIS
        .iter()
        .any(|(k, min, max)| *k == api_key && (*min..=*max).contains(&version))
}

fn api_versions_body(error: Option<ResponseError>) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error.map_or(0, |e| e.code());
    response.api_keys = SUPPORTED_APIS
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    response
}

/// A version we do not know gets a v0 response with UNSUPPORTED_VERSION and
/// our key list, so the client can retry with a version from it (KIP-511).
pub(crate) fn handle_api_versions(version: i16, correlation_id: i32, body: &mut Bytes) -> Outcome {
    let key = ApiKey::ApiVersions;
    if !is_supported(key, version) {
        let response = api_versions_body(Some(ResponseError::UnsupportedVersion));
        return encode_response(key, 0, 0, correlation_id, &response);
    }
    if let Err(e) = ApiVersionsRequest::decode(body, version) {
        tracing::debug!(error = %e, "malformed ApiVersions request");
        let response = api_versions_body(Some(ResponseError::InvalidRequest));
        return encode_response(key, version, 0, correlation_id, &response);
    }
    encode_response(key, version, 0, correlation_id, &api_versions_body(None))
}
