//! ListOffsets: earliest, latest, max-timestamp, and the first offset whose
//! timestamp is at or after a given time (what `offsets_for_times` uses).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::connection::Ctx;
use crate::errors::{kafka_error, log_error};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
/// The response's leader epoch exists from v4; the codec refuses it earlier.
const LEADER_EPOCH_SINCE_VERSION: i16 = 4;

pub(crate) async fn handle(
    ctx: &Ctx,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in req.topics {
        let mut topic_response = ListOffsetsTopicResponse::default();
        let name = topic.name.0.to_string();
        topic_response.name = topic.name;
        for p in topic.partitions {
            let mut part = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            match ctx.broker.partition(&name, p.partition_index) {
                Err(e) => part.error_code = kafka_error(&e).code(),
                Ok(log) => {
                    let found = match p.timestamp {
                        LATEST => Ok(Some((log.high_watermark(), -1))),
                        EARLIEST | EARLIEST_LOCAL => Ok(Some((log.log_start_offset(), -1))),
                        MAX_TIMESTAMP => match log.max_timestamp() {
                            None => Ok(None),
                            Some(ts) => log
                                .offset_for_timestamp(ts)
                                .map(|o| o.map(|o| (o.offset, o.timestamp))),
                        },
                        ts => log
                            .offset_for_timestamp(ts)
                            .map(|o| o.map(|o| (o.offset, o.timestamp))),
                    };
                    match found {
                        Ok(Some((offset, timestamp))) => {
                            part.offset = offset;
                            part.timestamp = timestamp;
                            if version >= LEADER_EPOCH_SINCE_VERSION {
                                part.leader_epoch = 0;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            part.error_code = log_error(&e).code();
                        }
                    }
                }
            }
            topic_response.partitions.push(part);
        }
        response.topics.push(topic_response);
    }
    response
}
