//! InitProducerId: producer ids and epochs for idempotent producers.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use crate::connection::Ctx;

pub(crate) async fn init_producer_id(
    _ctx: &Ctx,
    _req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.error_code = ResponseError::UnsupportedVersion.code();
    response
}
