"""Resource alarms seen by Kafka and SQS clients: with a disk_free_limit
above the disk's free space the disk alarm is up. A produce request is held
for half its timeout and then refused with REQUEST_TIMED_OUT (librdkafka
retries it until message.timeout.ms), a SendMessage is held and then
answered RequestThrottled (botocore's throttling error); nothing is stored,
and consumers keep working. Held requests that go through once the alarm
clears are tested on a small tmpfs in crates/ferry/tests/produce_alarms.rs."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError
from confluent_kafka import KafkaError

from amqp_util import wait_for
from interop_util import make_consumer, make_producer, produce_all, unique_topic, watermarks
from sqs_util import error_code, sqs_client

# More free space than any disk has: the alarm is up from the start.
HUGE = "1000000000000000000"


@pytest.mark.ferry_args("--disk-free-limit", HUGE)
def test_kafka_producer_is_refused_and_nothing_is_stored(ferry):
    wait_for(lambda: "disk alarm raised" in ferry.log, what="the disk alarm")
    topic = unique_topic()
    producer = make_producer(
        ferry.bootstrap,
        **{"request.timeout.ms": 2000, "message.timeout.ms": 5000, "retry.backoff.ms": 200},
    )
    started = time.monotonic()
    reports = produce_all(producer, topic, [{"value": b"refused"}] * 3, timeout=30)
    # Held before each refusal: not answered at once.
    assert time.monotonic() - started >= 1.0
    errors = {r[0].code() for r in reports}
    assert None not in errors
    assert errors <= {KafkaError.REQUEST_TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT}, errors
    # Metadata and fetches are not held: nothing was stored.
    consumer = make_consumer(ferry.bootstrap)
    assert watermarks(consumer, topic, 0) == (0, 0)
    consumer.close()


@pytest.mark.ferry_args("--disk-free-limit", HUGE)
def test_sqs_send_is_throttled_and_receives_go_on(ferry):
    wait_for(lambda: "disk alarm raised" in ferry.log, what="the disk alarm")
    client = sqs_client(ferry)
    url = client.create_queue(QueueName="alarmed")["QueueUrl"]
    started = time.monotonic()
    with pytest.raises(ClientError) as excinfo:
        client.send_message(QueueUrl=url, MessageBody="refused")
    assert time.monotonic() - started >= 5.0, "a send during an alarm is held before it is refused"
    assert error_code(excinfo) == "RequestThrottled"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "disk_free_limit" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as excinfo:
        client.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "refused"}])
    assert error_code(excinfo) == "RequestThrottled"
    # Receives are answered at once: nothing was stored.
    started = time.monotonic()
    assert client.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []
    assert time.monotonic() - started < 2.0
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
