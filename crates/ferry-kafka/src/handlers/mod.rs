//! Request dispatch: one module per group of APIs. Each handler takes the
//! decoded request and returns the response struct; this module decodes,
//! encodes and frames.

mod admin;
mod configs;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod producers;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::alarm::ResourceAlarms;
use futures_util::future::BoxFuture;
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteGroupsRequest, DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest, HeartbeatRequest,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest, RequestHeader, ResponseHeader,
    SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::sync::watch;

use crate::connection::Ctx;
use crate::versions;

/// What the connection does after a request.
#[derive(Debug)]
pub(crate) enum Outcome {
    Respond(Bytes),
    /// Produce with acks=0.
    NoResponse,
    /// The request was malformed: close the connection, as Kafka does.
    Close(String),
}

#[derive(Debug)]
pub(crate) struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    /// Where the body starts in the frame.
    pub body_start: usize,
}

#[derive(Debug)]
pub(crate) struct HeaderError(String);

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes the request header. Unknown API keys and headers that do not
/// decode close the connection: the broker cannot even tell which response
/// format the client would understand.
pub(crate) fn parse_header(frame: &Bytes) -> Result<Request, HeaderError> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api_key = ApiKey::try_from(key)
        .map_err(|_| HeaderError(format!("unknown API key {key} (version {version})")))?;
    let header_version = api_key.request_header_version(version);
    let mut buf = frame.clone();
    match RequestHeader::decode(&mut buf, header_version) {
        Ok(header) => Ok(Request {
            api_key,
            header,
            body_start: frame.len() - buf.len(),
        }),
        // A client probing with an ApiVersions version from the future may
        // frame its header differently; it still gets the v0 answer that
        // tells it what we support, addressed by its correlation id.
        Err(_) if api_key == ApiKey::ApiVersions => {
            let mut header = RequestHeader::default();
            header.request_api_key = key;
            header.request_api_version = version;
            header.correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            Ok(Request {
                api_key,
                header,
                body_start: frame.len(),
            })
        }
        Err(e) => Err(HeaderError(format!(
            "malformed {api_key:?} v{version} request header: {e}"
        ))),
    }
}

/// Decodes a request frame (what follows its size) as the connection does,
/// without serving it: the header, then the body with the decoder of its API
/// and version, and for a Produce the record batches as the log validates
/// them before an append. The entry point of the `kafka_request` fuzz
/// target, so that the fuzzer runs the server's decoders and no copy of them.
pub fn decode_request(frame: Bytes) -> Result<(), String> {
    if frame.len() < crate::connection::REQUEST_BYTES_MIN {
        return Err("shorter than a request header".to_string());
    }
    let request = parse_header(&frame).map_err(|e| e.to_string())?;
    let version = request.header.request_api_version;
    let mut body = frame.slice(request.body_start..);
    fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<(), String> {
        T::decode(body, version)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    if !versions::is_supported(request.api_key, version) {
        // Answered (ApiVersions) or closed without looking at the body.
        return Err("unsupported version".to_string());
    }
    match request.api_key {
        ApiKey::Produce => {
            let produce = ProduceRequest::decode(&mut body, version).map_err(|e| e.to_string())?;
            for topic in produce.topic_data {
                for partition in topic.partition_data {
                    if let Some(records) = partition.records {
                        ferry_log::batch::validate_for_append(
                            &records,
                            ferry_log::LogConfig::default().max_batch_bytes as usize,
                        )
                        .map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        ApiKey::ApiVersions => decode::<ApiVersionsRequest>(&mut body, version)?,
        ApiKey::Fetch => decode::<FetchRequest>(&mut body, version)?,
        ApiKey::ListOffsets => decode::<ListOffsetsRequest>(&mut body, version)?,
        ApiKey::Metadata => decode::<MetadataRequest>(&mut body, version)?,
        ApiKey::DescribeCluster => decode::<DescribeClusterRequest>(&mut body, version)?,
        ApiKey::CreateTopics => decode::<CreateTopicsRequest>(&mut body, version)?,
        ApiKey::DeleteTopics => decode::<DeleteTopicsRequest>(&mut body, version)?,
        ApiKey::CreatePartitions => decode::<CreatePartitionsRequest>(&mut body, version)?,
        ApiKey::DescribeConfigs => decode::<DescribeConfigsRequest>(&mut body, version)?,
        ApiKey::AlterConfigs => decode::<AlterConfigsRequest>(&mut body, version)?,
        ApiKey::IncrementalAlterConfigs => {
            decode::<IncrementalAlterConfigsRequest>(&mut body, version)?
        }
        ApiKey::FindCoordinator => decode::<FindCoordinatorRequest>(&mut body, version)?,
        ApiKey::JoinGroup => decode::<JoinGroupRequest>(&mut body, version)?,
        ApiKey::SyncGroup => decode::<SyncGroupRequest>(&mut body, version)?,
        ApiKey::Heartbeat => decode::<HeartbeatRequest>(&mut body, version)?,
        ApiKey::LeaveGroup => decode::<LeaveGroupRequest>(&mut body, version)?,
        ApiKey::OffsetCommit => decode::<OffsetCommitRequest>(&mut body, version)?,
        ApiKey::OffsetFetch => decode::<OffsetFetchRequest>(&mut body, version)?,
        ApiKey::ListGroups => decode::<ListGroupsRequest>(&mut body, version)?,
        ApiKey::DescribeGroups => decode::<DescribeGroupsRequest>(&mut body, version)?,
        ApiKey::DeleteGroups => decode::<DeleteGroupsRequest>(&mut body, version)?,
        ApiKey::OffsetDelete => decode::<OffsetDeleteRequest>(&mut body, version)?,
        ApiKey::InitProducerId => decode::<InitProducerIdRequest>(&mut body, version)?,
        other => return Err(format!("{other:?} has no handler")),
    }
    Ok(())
}

/// Frames a response: size, header (v0 for ApiVersions, always), body.
pub(crate) fn encode_response<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    header_version: i16,
    correlation_id: i32,
    body: &R,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut buf, header_version)
        .and_then(|()| body.encode(&mut buf, version));
    match encoded {
        Ok(()) => {
            let len = (buf.len() - 4) as i32;
            buf[0..4].copy_from_slice(&len.to_be_bytes());
            Outcome::Respond(buf.freeze())
        }
        Err(e) => Outcome::Close(format!(
            "could not encode {api_key:?} v{version} response: {e}"
        )),
    }
}

/// Starts a request. Produce appends happen right here, before the next
/// request is read, so that requests pipelined on one connection are
/// appended in the order they were sent (Kafka serves one request per
/// connection at a time); all the waiting (fsync, long polls) happens in the
/// returned future, which the connection runs concurrently with later
/// requests. The one wait here is a produce during a resource alarm
/// (`produce::append_when_clear`): the connection is not read meanwhile.
pub(crate) async fn start(
    ctx: Arc<Ctx>,
    request: Request,
    frame: Bytes,
    alarms: &mut watch::Receiver<ResourceAlarms>,
) -> BoxFuture<'static, Outcome> {
    let api_key = request.api_key;
    let version = request.header.request_api_version;
    if api_key != ApiKey::Produce || !versions::is_supported(api_key, version) {
        return Box::pin(async move { handle(&ctx, request, frame).await });
    }
    let correlation_id = request.header.correlation_id;
    let mut body = frame.slice(request.body_start..);
    let appended = match ProduceRequest::decode(&mut body, version) {
        Ok(req) if alarms.borrow().any() => produce::append_when_clear(&ctx, req, alarms).await,
        Ok(req) => produce::append(&ctx, req, None),
        Err(e) => {
            let reason = format!("malformed Produce v{version} request: {e}");
            return Box::pin(std::future::ready(Outcome::Close(reason)));
        }
    };
    Box::pin(async move {
        match appended.finish().await {
            Some(response) => encode_response(
                api_key,
                version,
                api_key.response_header_version(version),
                correlation_id,
                &response,
            ),
            None => Outcome::NoResponse,
        }
    })
}

async fn handle(ctx: &Ctx, request: Request, frame: Bytes) -> Outcome {
    let api_key = request.api_key;
    let version = request.header.request_api_version;
    let correlation_id = request.header.correlation_id;
    let mut body = frame.slice(request.body_start..);

    if api_key == ApiKey::ApiVersions {
        return versions::handle_api_versions(version, correlation_id, &mut body);
    }
    if !versions::is_supported(api_key, version) {
        return Outcome::Close(format!(
            "{api_key:?} v{version} is not supported (see ApiVersions)"
        ));
    }

    macro_rules! dispatch {
        ($req:ty, $handler:expr) => {{
            let req = match <$req>::decode(&mut body, version) {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Close(format!(
                        "malformed {api_key:?} v{version} request: {e}"
                    ));
                }
            };
            let response = $handler(ctx, req, version).await;
            encode_response(
                api_key,
                version,
                api_key.response_header_version(version),
                correlation_id,
                &response,
            )
        }};
    }

    match api_key {
        ApiKey::Fetch => dispatch!(FetchRequest, fetch::handle),
        ApiKey::ListOffsets => dispatch!(ListOffsetsRequest, offsets::handle),
        ApiKey::Metadata => dispatch!(MetadataRequest, metadata::handle),
        ApiKey::DescribeCluster => dispatch!(DescribeClusterRequest, metadata::describe_cluster),
        ApiKey::CreateTopics => dispatch!(CreateTopicsRequest, admin::create_topics),
        ApiKey::DeleteTopics => dispatch!(DeleteTopicsRequest, admin::delete_topics),
        ApiKey::CreatePartitions => dispatch!(CreatePartitionsRequest, admin::create_partitions),
        ApiKey::DescribeConfigs => dispatch!(DescribeConfigsRequest, configs::describe),
        ApiKey::AlterConfigs => dispatch!(AlterConfigsRequest, configs::alter),
        ApiKey::IncrementalAlterConfigs => {
            dispatch!(IncrementalAlterConfigsRequest, configs::incremental_alter)
        }
        ApiKey::FindCoordinator => dispatch!(FindCoordinatorRequest, groups::find_coordinator),
        ApiKey::JoinGroup => {
            // The member's client id comes from the request header.
            let client_id = request
                .header
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            dispatch!(JoinGroupRequest, |ctx, req, version| groups::join_group(
                ctx, req, version, client_id
            ))
        }
        ApiKey::SyncGroup => dispatch!(SyncGroupRequest, groups::sync_group),
        ApiKey::Heartbeat => dispatch!(HeartbeatRequest, groups::heartbeat),
        ApiKey::LeaveGroup => dispatch!(LeaveGroupRequest, groups::leave_group),
        ApiKey::OffsetCommit => dispatch!(OffsetCommitRequest, groups::offset_commit),
        ApiKey::OffsetFetch => dispatch!(OffsetFetchRequest, groups::offset_fetch),
        ApiKey::ListGroups => dispatch!(ListGroupsRequest, groups::list_groups),
        ApiKey::DescribeGroups => dispatch!(DescribeGroupsRequest, groups::describe_groups),
        ApiKey::DeleteGroups => dispatch!(DeleteGroupsRequest, groups::delete_groups),
        ApiKey::OffsetDelete => dispatch!(OffsetDeleteRequest, groups::offset_delete),
        ApiKey::InitProducerId => dispatch!(InitProducerIdRequest, producers::init_producer_id),
        // is_supported() let only the keys above through.
        other => Outcome::Close(format!("{other:?} v{version} has no handler")),
    }
}
