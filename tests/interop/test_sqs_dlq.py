"""SQS dead-letter queues with boto3: RedrivePolicy and maxReceiveCount,
DeadLetterQueueSourceArn, RedriveAllowPolicy, ListDeadLetterSourceQueues,
and message move tasks (StartMessageMoveTask back to the source or to a
given destination at a rate, ListMessageMoveTasks, CancelMessageMoveTask)."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from sqs_util import arn, error_code, receive_all, sqs_client


def redrive(dlq: str, count: int) -> dict:
    return {"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn(dlq), "maxReceiveCount": count})}


def fail_until_dead(c, url, times: int) -> dict:
    """Receives the one message `times` times without deleting it."""
    first = None
    for i in range(times):
        r = c.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=1, AttributeNames=["All"])
        assert len(r.get("Messages", [])) == 1, f"receive {i + 1}"
        m = r["Messages"][0]
        assert m["Attributes"]["ApproximateReceiveCount"] == str(i + 1)
        first = first or m
    return first


def test_max_receive_count_moves_a_message_to_the_dlq(ferry):
    c = sqs_client(ferry)
    dlq = c.create_queue(QueueName="work-dlq")["QueueUrl"]
    url = c.create_queue(QueueName="work", Attributes=redrive("work-dlq", 2))["QueueUrl"]
    attrs = {"k": {"DataType": "String", "StringValue": "v"}}
    sent = c.send_message(QueueUrl=url, MessageBody="poison", MessageAttributes=attrs)
    fail_until_dead(c, url, 2)
    # The third receive moves it instead of delivering it.
    assert "Messages" not in c.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    m = c.receive_message(QueueUrl=dlq, AttributeNames=["All"], MessageAttributeNames=["All"])["Messages"][0]
    assert (m["MessageId"], m["Body"]) == (sent["MessageId"], "poison")
    assert m["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert m["Attributes"]["DeadLetterQueueSourceArn"] == arn("work")
    # Its receive count starts again in the dead-letter queue.
    assert m["Attributes"]["ApproximateReceiveCount"] == "1"
    rp = json.loads(c.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"])
    assert rp == {"deadLetterTargetArn": arn("work-dlq"), "maxReceiveCount": 2}
    assert c.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [url]
    assert c.list_dead_letter_source_queues(QueueUrl=url)["queueUrls"] == []


def test_redrive_policy_and_allow_policy_rules(ferry):
    c = sqs_client(ferry)
    c.create_queue(QueueName="closed-dlq", Attributes={"RedriveAllowPolicy": json.dumps({"redrivePermission": "denyAll"})})
    c.create_queue(
        QueueName="picky-dlq",
        Attributes={
            "RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [arn("allowed")]})
        },
    )
    for name, attrs in [
        ("denied", redrive("closed-dlq", 3)),
        ("not-listed", redrive("picky-dlq", 3)),
        ("no-target", redrive("nowhere", 3)),
        ("zero", redrive("picky-dlq", 0)),
        ("too-many", redrive("picky-dlq", 1001)),
    ]:
        with pytest.raises(ClientError) as e:
            c.create_queue(QueueName=name, Attributes=attrs)
        assert error_code(e) == "InvalidParameterValue", name
    c.create_queue(QueueName="allowed", Attributes=redrive("picky-dlq", 3))
    # A FIFO queue's dead-letter queue must be FIFO too.
    c.create_queue(QueueName="f-dlq.fifo", Attributes={"FifoQueue": "true"})
    with pytest.raises(ClientError) as e:
        c.create_queue(QueueName="std-source", Attributes=redrive("f-dlq.fifo", 3))
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        c.create_queue(
            QueueName="bad-allow", Attributes={"RedriveAllowPolicy": json.dumps({"redrivePermission": "sometimes"})}
        )
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        c.create_queue(QueueName="bad-json", Attributes={"RedrivePolicy": "{not json"})
    assert error_code(e) == "InvalidAttributeValue"


def test_move_task_redrives_back_to_the_source(ferry):
    c = sqs_client(ferry)
    dlq = c.create_queue(QueueName="orders-dlq")["QueueUrl"]
    src = c.create_queue(QueueName="orders", Attributes=redrive("orders-dlq", 1))["QueueUrl"]
    for i in range(5):
        c.send_message(QueueUrl=src, MessageBody=f"o{i}")
    # Received once each, never deleted: on the next receive they move.
    got = receive_all(c, src, 5, VisibilityTimeout=0)
    assert len(got) >= 5
    assert "Messages" not in c.receive_message(QueueUrl=src, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    counts = c.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == "5"

    handle = c.start_message_move_task(SourceArn=arn("orders-dlq"))["TaskHandle"]
    deadline = time.monotonic() + 10
    while True:
        tasks = c.list_message_move_tasks(SourceArn=arn("orders-dlq"))["Results"]
        if tasks[0]["Status"] == "COMPLETED" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    t = tasks[0]
    assert t["Status"] == "COMPLETED"
    assert (t["ApproximateNumberOfMessagesMoved"], t["ApproximateNumberOfMessagesToMove"]) == (5, 5)
    assert t["SourceArn"] == arn("orders-dlq") and "DestinationArn" not in t
    assert "TaskHandle" not in t  # only running tasks show their handle
    # Back in the source queue, without the dead-letter attribute.
    back = receive_all(c, src, 5, AttributeNames=["All"])
    assert sorted(m["Body"] for m in back) == [f"o{i}" for i in range(5)]
    assert all("DeadLetterQueueSourceArn" not in m["Attributes"] for m in back)
    # A finished task cannot be cancelled.
    with pytest.raises(ClientError) as e:
        c.cancel_message_move_task(TaskHandle=handle)
    assert error_code(e) == "ResourceNotFoundException"


def test_move_task_to_a_destination_at_a_rate_and_cancelled(ferry):
    c = sqs_client(ferry)
    dlq = c.create_queue(QueueName="dl")["QueueUrl"]
    c.create_queue(QueueName="src", Attributes=redrive("dl", 3))
    other = c.create_queue(QueueName="elsewhere")["QueueUrl"]
    for i in range(20):
        c.send_message(QueueUrl=dlq, MessageBody=f"m{i}")
    handle = c.start_message_move_task(
        SourceArn=arn("dl"), DestinationArn=arn("elsewhere"), MaxNumberOfMessagesPerSecond=4
    )["TaskHandle"]
    # One task per source at a time.
    with pytest.raises(ClientError) as e:
        c.start_message_move_task(SourceArn=arn("dl"))
    assert error_code(e) == "AWS.SimpleQueueService.UnsupportedOperation"
    time.sleep(1.0)
    running = c.list_message_move_tasks(SourceArn=arn("dl"), MaxResults=10)["Results"]
    assert len(running) == 1
    t = running[0]
    assert (t["Status"], t["TaskHandle"], t["DestinationArn"], t["MaxNumberOfMessagesPerSecond"]) == (
        "RUNNING",
        handle,
        arn("elsewhere"),
        4,
    )
    assert t["ApproximateNumberOfMessagesToMove"] == 20
    # At 4 a second, about a second in: far from done.
    assert 1 <= t["ApproximateNumberOfMessagesMoved"] <= 10
    cancelled = c.cancel_message_move_task(TaskHandle=handle)
    assert cancelled["ApproximateNumberOfMessagesMoved"] <= 10
    time.sleep(0.5)
    t = c.list_message_move_tasks(SourceArn=arn("dl"))["Results"][0]
    assert t["Status"] in ("CANCELLING", "CANCELLED")
    moved = t["ApproximateNumberOfMessagesMoved"]
    dl_left = int(c.get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"])["Attributes"]["ApproximateNumberOfMessages"])
    in_other = receive_all(c, other, moved, timeout_s=3)
    assert len(in_other) == moved and dl_left == 20 - moved
    # A new task finishes the job, without a rate.
    c.start_message_move_task(SourceArn=arn("dl"), DestinationArn=arn("elsewhere"))
    deadline = time.monotonic() + 10
    while c.list_message_move_tasks(SourceArn=arn("dl"))["Results"][0]["Status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    history = c.list_message_move_tasks(SourceArn=arn("dl"), MaxResults=10)["Results"]
    assert [h["Status"] for h in history] == ["COMPLETED", "CANCELLED"]
    rest = receive_all(c, other, 20 - moved, timeout_s=5)
    assert sorted(m["Body"] for m in in_other + rest) == sorted(f"m{i}" for i in range(20))


def test_move_task_errors(ferry):
    c = sqs_client(ferry)
    c.create_queue(QueueName="plain")
    with pytest.raises(ClientError) as e:
        c.start_message_move_task(SourceArn=arn("plain"))
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        c.start_message_move_task(SourceArn=arn("missing"))
    assert error_code(e) == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    c.create_queue(QueueName="d")
    c.create_queue(QueueName="s", Attributes=redrive("d", 2))
    with pytest.raises(ClientError) as e:
        c.start_message_move_task(SourceArn=arn("d"), DestinationArn=arn("nope"))
    assert error_code(e) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as e:
        c.start_message_move_task(SourceArn=arn("d"), MaxNumberOfMessagesPerSecond=501)
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        c.cancel_message_move_task(TaskHandle="no-such-task")
    assert error_code(e) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as e:
        c.list_message_move_tasks(SourceArn=arn("missing"))
    assert error_code(e) == "ResourceNotFoundException"
