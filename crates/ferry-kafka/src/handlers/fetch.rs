//! Fetch: byte ranges of stored batches, with long polling. The response waits
//! until `min_bytes` are available or `max_wait_ms` has passed, whichever is
//! first, and never holds more than `max_bytes` (except one whole first batch,
//! KIP-74) or a partition's `partition_max_bytes`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_log::{Log, LogError};
use futures_util::future::select_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use tokio::time::Instant;

use crate::connection::Ctx;
use crate::errors::{kafka_error, log_error};

/// Fetch v13 replaced topic names with topic ids.
const TOPIC_IDS_SINCE_VERSION: i16 = 13;

/// A requested topic: its name and id as the client gave them, and its
/// partitions in request order.
struct TopicTargets {
    name: TopicName,
    id: uuid::Uuid,
    /// The topic's name if it exists (since v13 requests give only its id),
    /// for metrics and log lines.
    known_name: Option<String>,
    partitions: Vec<(i32, Target)>,
}

/// A requested partition, resolved to its log (or the error to report).
struct Target {
    log: Result<Arc<Log>, ResponseError>,
    fetch_offset: i64,
    partition_max_bytes: usize,
}

pub(crate) async fn handle(ctx: &Ctx, req: FetchRequest, version: i16) -> FetchResponse {
    let mut response = FetchResponse::default();
    if req.session_id != 0 {
        // We never hand out fetch sessions (KIP-227), so a client naming one
        // is confused; it will fall back to full fetch requests.
        response.error_code = ResponseError::FetchSessionIdNotFound.code();
        return response;
    }
    let by_id = version >= TOPIC_IDS_SINCE_VERSION;

    // Resolve every partition once, keeping the request's order.
    let mut topics = Vec::with_capacity(req.topics.len());
    for fetch_topic in &req.topics {
        let topic = if by_id {
            ctx.broker
                .topic_by_id(fetch_topic.topic_id)
                .ok_or(ResponseError::UnknownTopicId)
        } else {
            ctx.broker
                .topic(&fetch_topic.topic.0)
                .ok_or(ResponseError::UnknownTopicOrPartition)
        };
        let targets: Vec<(i32, Target)> = fetch_topic
            .partitions
            .iter()
            .map(|p| {
                let log = topic
                    .as_ref()
                    .map_err(|e| *e)
                    .and_then(|t| t.partition(p.partition).map_err(|e| kafka_error(&e)));
                let target = Target {
                    log,
                    fetch_offset: p.fetch_offset,
                    partition_max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
                };
                (p.partition, target)
            })
            .collect();
        topics.push(TopicTargets {
            name: fetch_topic.topic.clone(),
            id: fetch_topic.topic_id,
            known_name: topic.as_ref().ok().map(|t| t.name.clone()),
            partitions: targets,
        });
    }

    let max_bytes = usize::try_from(req.max_bytes)
        .unwrap_or(0)
        .min(ctx.config.fetch_bytes_max);
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    let wait_ms = u64::try_from(req.max_wait_ms)
        .unwrap_or(0)
        .min(ctx.config.fetch_wait_ms_max);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);

    loop {
        // Subscribe before reading so that an append between the read and the
        // wait still wakes us.
        let mut watchers: Vec<_> = topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .filter_map(|(_, t)| t.log.as_ref().ok().map(|log| log.subscribe()))
            .collect();
        for w in &mut watchers {
            w.borrow_and_update();
        }

        let (responses, bytes, any_error) = read_all(&topics, max_bytes);
        if bytes >= min_bytes || any_error || Instant::now() >= deadline || watchers.is_empty() {
            count_sent(ctx, &topics, &responses);
            response.responses = responses;
            return response;
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            // Deadline passed: answer with whatever there is now.
            let (responses, _, _) = read_all(&topics, max_bytes);
            count_sent(ctx, &topics, &responses);
            response.responses = responses;
            return response;
        }
    }
}

/// Counts the records (from each partition's fetch offset on) and bytes an
/// answer sends, for the traffic metrics. Only the answer that is sent is
/// counted, not the reads a long poll discards.
fn count_sent(ctx: &Ctx, topics: &[TopicTargets], responses: &[FetchableTopicResponse]) {
    for (topic, response) in topics.iter().zip(responses) {
        let name = topic.known_name.as_deref().unwrap_or(&topic.name.0);
        for ((index, target), data) in topic.partitions.iter().zip(&response.partitions) {
            let Some(records) = data.records.as_ref().filter(|r| !r.is_empty()) else {
                continue;
            };
            let Ok(batches) = ferry_log::records::split_batches(records.clone()) else {
                continue;
            };
            let count: i64 = batches
                .iter()
                .map(|(base, last, _)| (last - (*base).max(target.fetch_offset) + 1).max(0))
                .sum();
            ctx.broker
                .metrics()
                .records_out(name, *index, count as u64, records.len() as u64);
        }
    }
}

/// Reads every partition once. Returns the topic responses, the record bytes
/// gathered, and whether any partition reported an error.
fn read_all(
    topics: &[TopicTargets],
    max_bytes: usize,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(topics.len());
    for topic in topics {
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.name.clone();
        topic_response.topic_id = topic.id;
        for (index, target) in &topic.partitions {
            let mut data = PartitionData::default();
            data.partition_index = *index;
            data.aborted_transactions = None;
            data.records = Some(Bytes::new());
            match &target.log {
                Err(code) => {
                    data.error_code = code.code();
                    data.high_watermark = -1;
                    any_error = true;
                }
                Ok(log) => {
                    let budget = target
                        .partition_max_bytes
                        .min(max_bytes.saturating_sub(total));
                    // KIP-74: the first batch of the first partition with data
                    // is returned whole even if it exceeds the limits, so that
                    // a consumer can always make progress.
                    let min_one = total == 0;
                    match log.read(target.fetch_offset, budget, min_one) {
                        Ok(read) => {
                            total += read.records.len();
                            data.high_watermark = read.high_watermark;
                            data.last_stable_offset = read.high_watermark;
                            data.log_start_offset = read.log_start_offset;
                            data.records = Some(read.records);
                        }
                        Err(e) => {
                            if let LogError::CorruptBatch { .. } = e {
                                tracing::error!(
                                    topic = %topic.known_name.as_deref().unwrap_or_default(),
                                    partition = *index,
                                    fetch_offset = target.fetch_offset,
                                    error = %e,
                                    "not serving a corrupt record batch: answered CORRUPT_MESSAGE"
                                );
                            }
                            data.error_code = log_error(&e).code();
                            data.high_watermark = log.high_watermark();
                            data.last_stable_offset = data.high_watermark;
                            data.log_start_offset = log.log_start_offset();
                            any_error = true;
                        }
                    }
                }
            }
            topic_response.partitions.push(data);
        }
        responses.push(topic_response);
    }
    (responses, total, any_error)
}
