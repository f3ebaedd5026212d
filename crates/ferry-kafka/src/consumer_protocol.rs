//! The consumer protocol's embedded structures (KIP-429's
//! `ConsumerProtocolAssignment`), which the group coordinator keeps as
//! opaque bytes: decoded here for whoever shows them to people (the CLI's
//! `ferry group describe`, the admin HTTP API).

use std::collections::BTreeMap;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;

/// A member's assignment as topic → sorted partitions (a version prefix,
/// then the struct). Empty or undecodable bytes mean no partitions: a
/// member of a group that is not a Kafka consumer group assigns in its own
/// format.
pub fn decode_assignment(bytes: &Bytes) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return out;
    }
    let version = buf.get_i16().clamp(0, 3);
    if let Ok(a) = ConsumerProtocolAssignment::decode(&mut buf, version) {
        for tp in a.assigned_partitions {
            let mut ps = tp.partitions;
            ps.sort_unstable();
            out.entry(tp.topic.0.to_string()).or_default().extend(ps);
        }
    }
    out
}
