//! Produce: validate and append each partition's batches, then wait for the
//! durability the topic's fsync policy promises before acknowledging.
//!
//! Idempotent producers' batches are checked by the log as they are appended
//! (epoch, sequence). A retried batch that is already in the log is answered
//! with its original base offset, as Kafka does, once the original is
//! durable: the log's `AppendInfo` then describes the original.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::alarm::{self, ResourceAlarms};
use ferry_log::{AppendInfo, Log};
use futures_util::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tokio::sync::watch;

use crate::connection::Ctx;
use crate::errors::{kafka_error, log_error, message};

/// One partition's append, waiting to become durable.
struct Pending {
    topic: usize,
    partition: usize,
    log: Arc<Log>,
    info: AppendInfo,
}

/// Why a produce request was answered without appending anything.
pub(crate) struct Refusal {
    error: ResponseError,
    reason: String,
}

/// The longest a produce request is held during a resource alarm: half the
/// request's `timeout_ms` (the producer's patience; librdkafka and the Java
/// client send 30 s), so that the client hears from us before it gives up
/// on the request and drops the connection.
fn alarm_hold(req: &ProduceRequest) -> Option<Duration> {
    // acks=0 expects no answer: hold it until the alarm clears, as RabbitMQ
    // holds a blocked publisher; the connection is not read meanwhile.
    (req.acks != 0).then(|| Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0) / 2))
}

/// A produce request that arrived during a resource alarm (low disk space
/// or high memory, see `ferry_core::alarm`): it waits, with the connection
/// not read, until the alarm clears, then appends as usual. If the alarm
/// outlasts the hold, nothing is appended and every partition is answered
/// with REQUEST_TIMED_OUT, which producers retry. Either way the response's
/// `throttle_time_ms` says how long it was held.
pub(crate) async fn append_when_clear(
    ctx: &Ctx,
    req: ProduceRequest,
    alarms: &mut watch::Receiver<ResourceAlarms>,
) -> Appended {
    let held_since = Instant::now();
    let why = alarms.borrow().blocked_reason().unwrap_or("resource alarm");
    tracing::debug!(peer = %ctx.peer, alarm = why, "produce request held during a resource alarm");
    let cleared = alarm::wait_until_clear(alarms, alarm_hold(&req)).await;
    let refused = (!cleared).then(|| Refusal {
        error: ResponseError::RequestTimedOut,
        reason: format!(
            "broker {why}: produce refused until the alarm clears (disk_free_limit, memory_high_watermark)"
        ),
    });
    let mut appended = append(ctx, req, refused);
    appended.response.throttle_time_ms =
        i32::try_from(held_since.elapsed().as_millis()).unwrap_or(i32::MAX);
    appended
}

/// A produce request whose batches are appended and whose answer waits for
/// durability.
pub(crate) struct Appended {
    acks: i16,
    response: ProduceResponse,
    pending: Vec<Pending>,
}

/// Appends every partition's batches now, or, with `refused`, none of them:
/// each partition is answered with that error. Called in the order requests
/// arrive on a connection, so that pipelined produce requests are stored in
/// the order they were sent, as Kafka (one request per connection at a time)
/// guarantees.
pub(crate) fn append(ctx: &Ctx, req: ProduceRequest, refused: Option<Refusal>) -> Appended {
    let acks = req.acks;
    let mut response = ProduceResponse::default();
    let mut pending = Vec::new();
    for (t, topic_data) in req.topic_data.into_iter().enumerate() {
        let name = topic_data.name.0.to_string();
        let topic = ctx.broker.topic_or_auto_create(&name);
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = topic_data.name;
        for (p, data) in topic_data.partition_data.into_iter().enumerate() {
            let mut part = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let result = if let Some(r) = &refused {
                Err((r.error, r.reason.clone()))
            } else if !matches!(acks, -1..=1) {
                Err((
                    ResponseError::InvalidRequiredAcks,
                    format!("acks must be -1, 0 or 1, not {acks}"),
                ))
            } else {
                match (&topic, data.records) {
                    (Err(e), _) => Err((kafka_error(e), e.to_string())),
                    (Ok(_), None) => Err((ResponseError::CorruptMessage, "no records".to_string())),
                    (Ok(topic), Some(records)) => match topic.partition(data.index) {
                        Err(e) => Err((kafka_error(&e), e.to_string())),
                        Ok(log) => log
                            .append(&records)
                            .map(|info| {
                                if !info.duplicate {
                                    let count = info.last_offset - info.base_offset + 1;
                                    ctx.broker.metrics().records_in(
                                        &name,
                                        data.index,
                                        count.max(0) as u64,
                                        records.len() as u64,
                                    );
                                }
                                (log, info)
                            })
                            .map_err(|e| {
                                let code = log_error(&e);
                                if code == ResponseError::KafkaStorageError {
                                    tracing::error!(topic = %name, partition = data.index, error = %e, "append failed");
                                } else {
                                    tracing::debug!(peer = %ctx.peer, topic = %name, partition = data.index, error = %e, "rejected batch");
                                }
                                (code, e.to_string())
                            }),
                    },
                }
            };
            match result {
                Ok((log, info)) => {
                    if info.duplicate {
                        tracing::debug!(
                            peer = %ctx.peer,
                            topic = %name,
                            partition = data.index,
                            base_offset = info.base_offset,
                            "retried batch of an idempotent producer: answered with its original offsets"
                        );
                    }
                    part.base_offset = info.base_offset;
                    part.log_start_offset = info.log_start_offset;
                    pending.push(Pending {
                        topic: t,
                        partition: p,
                        log,
                        info,
                    });
                }
                Err((code, text)) => {
                    part.error_code = code.code();
                    part.error_message = message(&text);
                }
            }
            topic_response.partition_responses.push(part);
        }
        response.responses.push(topic_response);
    }

    Appended {
        acks,
        response,
        pending,
    }
}

impl Appended {
    /// Waits until the appends are durable under their topics' fsync policy.
    /// Returns `None` for acks=0, which gets no response.
    pub(crate) async fn finish(self) -> Option<ProduceResponse> {
        let Appended {
            acks,
            mut response,
            pending,
        } = self;
        if acks == 0 {
            // Nobody waits for the answer, but under fsync=always the records only
            // become readable once an fsync covers them.
            tokio::spawn(async move {
                for p in pending {
                    if let Err(e) = p.log.wait_durable(&p.info).await {
                        tracing::warn!(error = %e, "acks=0 append did not become durable");
                    }
                }
            });
            return None;
        }

        let results = join_all(pending.iter().map(|p| p.log.wait_durable(&p.info))).await;
        for (p, result) in pending.iter().zip(results) {
            if let Err(e) = result {
                tracing::error!(error = %e, "append did not become durable");
                let part = &mut response.responses[p.topic].partition_responses[p.partition];
                part.error_code = log_error(&e).code();
                part.error_message = message(&e);
                part.base_offset = -1;
            }
        }
        Some(response)
    }
}
