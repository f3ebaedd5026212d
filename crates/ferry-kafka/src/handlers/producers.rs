//! InitProducerId: producer ids and epochs for idempotent producers.
//!
//! Without a transactional id (an idempotent producer) every request gets a
//! producer id never handed out before, with epoch 0, as Kafka's transaction
//! coordinator does ("blindly accept the request and return a new
//! producerId"). That holds too when a client (v3+, KIP-360) sends its
//! current id and epoch to have its epoch bumped: a fresh id resets its
//! sequence numbers just as well, and librdkafka, the Java client and
//! kafka-python all take whatever id and epoch come back.
//!
//! Transactions are not supported yet: a transactional id gets
//! COORDINATOR_NOT_AVAILABLE, Kafka's answer while no transaction
//! coordinator is available (InitProducerId has no error message field in
//! any version, so the reason is only logged).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::connection::Ctx;
use crate::errors::kafka_error;

/// InitProducerId v3 added the producer's current id and epoch (KIP-360).
const CURRENT_ID_SINCE_VERSION: i16 = 3;
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

fn failed(error: ResponseError) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(error.code())
        .with_producer_id(ProducerId(NO_PRODUCER_ID))
        .with_producer_epoch(NO_PRODUCER_EPOCH)
}

pub(crate) async fn init_producer_id(
    ctx: &Ctx,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    if let Some(transactional_id) = &req.transactional_id {
        if transactional_id.0.is_empty() {
            return failed(ResponseError::InvalidRequest);
        }
        tracing::info!(
            peer = %ctx.peer,
            transactional_id = %transactional_id.0.as_str(),
            "InitProducerId for a transactional producer: transactions are not supported, \
             answering COORDINATOR_NOT_AVAILABLE"
        );
        return failed(ResponseError::CoordinatorNotAvailable);
    }
    if version >= CURRENT_ID_SINCE_VERSION
        && (req.producer_id.0 == NO_PRODUCER_ID) != (req.producer_epoch == NO_PRODUCER_EPOCH)
    {
        // Kafka's check: the current id and epoch come together or not at all.
        return failed(ResponseError::InvalidRequest);
    }
    let broker = ctx.broker.clone();
    match tokio::task::spawn_blocking(move || broker.allocate_producer_id()).await {
        Ok(Ok(id)) => {
            tracing::debug!(
                peer = %ctx.peer,
                producer_id = id,
                previous_producer_id = req.producer_id.0,
                "new idempotent producer id"
            );
            InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not allocate a producer id");
            failed(kafka_error(&e))
        }
        Err(join) => {
            tracing::error!(error = %join, "producer id allocation panicked");
            failed(ResponseError::UnknownServerError)
        }
    }
}
