"""SQS messages with boto3 (JSON protocol, its MD5 validation left on):
send/receive/delete, attributes and their MD5s, visibility timeouts and
redelivery, long polling, batches and their rules, limits and errors."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from botocore.exceptions import ClientError

from sqs_util import ACCOUNT, error_code, receive_all, sqs_client

ATTRS = {
    "s": {"DataType": "String", "StringValue": "héllo"},
    "n": {"DataType": "Number", "StringValue": "12.50"},
    "custom": {"DataType": "Number.float", "StringValue": "3"},
    "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    "st": {"DataType": "String.json", "StringValue": '{"a":1}'},
}


def test_round_trip_with_attributes_and_md5s(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="rt")["QueueUrl"]
    body = "order #1 ünïcode \U0001f600"
    sent = c.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=ATTRS)
    assert sent["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest()
    assert "MD5OfMessageAttributes" in sent
    plain = c.send_message(QueueUrl=url, MessageBody="plain")
    # No attributes: no attributes MD5 at all (SDKs choke on an empty one).
    assert "MD5OfMessageAttributes" not in plain
    r = c.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    msgs = {m["Body"]: m for m in r["Messages"]}
    m = msgs[body]
    assert m["MessageId"] == sent["MessageId"]
    assert m["MessageAttributes"]["b"]["BinaryValue"] == b"\x00\x01\xff"
    assert m["MessageAttributes"]["custom"] == {"DataType": "Number.float", "StringValue": "3"}
    assert m["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert m["Attributes"]["ApproximateReceiveCount"] == "1"
    assert m["Attributes"]["SenderId"] == ACCOUNT
    assert abs(int(m["Attributes"]["SentTimestamp"]) - time.time() * 1000) < 60_000
    assert "MD5OfMessageAttributes" not in msgs["plain"]
    for x in r["Messages"]:
        c.delete_message(QueueUrl=url, ReceiptHandle=x["ReceiptHandle"])
    assert "Messages" not in c.receive_message(QueueUrl=url)


def test_message_attribute_name_filters(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="filters", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    c.send_message(
        QueueUrl=url,
        MessageBody="x",
        MessageAttributes={
            "order.id": {"DataType": "String", "StringValue": "1"},
            "order.total": {"DataType": "Number", "StringValue": "9"},
            "other": {"DataType": "String", "StringValue": "o"},
        },
    )

    def names(filters):
        m = c.receive_message(QueueUrl=url, MessageAttributeNames=filters)["Messages"][0]
        return sorted(m.get("MessageAttributes", {}))

    assert names(["All"]) == ["order.id", "order.total", "other"]
    assert names([".*"]) == ["order.id", "order.total", "other"]
    assert names(["order.*"]) == ["order.id", "order.total"]
    assert names(["other"]) == ["other"]
    assert names([]) == []
    # System attributes by name.
    m = c.receive_message(QueueUrl=url, AttributeNames=["SentTimestamp"])["Messages"][0]
    assert list(m["Attributes"]) == ["SentTimestamp"]


def test_visibility_timeout_redelivers_with_a_rising_receive_count(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="vis", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    c.send_message(QueueUrl=url, MessageBody="again")
    first = c.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"][0]
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    assert "Messages" not in c.receive_message(QueueUrl=url)
    time.sleep(1.3)
    second = c.receive_message(QueueUrl=url, AttributeNames=["All"], WaitTimeSeconds=2)["Messages"][0]
    assert second["MessageId"] == first["MessageId"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["Attributes"]["ApproximateFirstReceiveTimestamp"] == first["Attributes"]["ApproximateFirstReceiveTimestamp"]
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    # The old handle no longer changes visibility.
    with pytest.raises(ClientError) as e:
        c.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=10)
    assert error_code(e) == "AWS.SimpleQueueService.MessageNotInflight"
    # Per-receive visibility, then more time, then zero: back at once.
    c.change_message_visibility(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=30)
    time.sleep(1.3)
    assert "Messages" not in c.receive_message(QueueUrl=url)
    c.change_message_visibility(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=0)
    third = c.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"], VisibilityTimeout=30)
    assert third["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "3"
    c.delete_message(QueueUrl=url, ReceiptHandle=third["Messages"][0]["ReceiptHandle"])
    # Deleting with a stale handle succeeds (SQS allows it).
    c.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    with pytest.raises(c.exceptions.ReceiptHandleIsInvalid) as e:
        c.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
    assert error_code(e) == "ReceiptHandleIsInvalid"
    with pytest.raises(ClientError) as e:
        c.change_message_visibility(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=43201)
    assert error_code(e) == "InvalidParameterValue"


def test_long_poll_returns_as_soon_as_a_message_arrives(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="poll")["QueueUrl"]
    sender = sqs_client(ferry)
    t = threading.Timer(0.5, lambda: sender.send_message(QueueUrl=url, MessageBody="wake"))
    start = time.monotonic()
    t.start()
    r = c.receive_message(QueueUrl=url, WaitTimeSeconds=10)
    took = time.monotonic() - start
    t.join()
    assert r["Messages"][0]["Body"] == "wake"
    assert 0.4 < took < 3, took
    # Nothing comes: the poll lasts its WaitTimeSeconds (queue default too).
    start = time.monotonic()
    assert "Messages" not in c.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    assert 0.9 < time.monotonic() - start < 3
    c.set_queue_attributes(QueueUrl=url, Attributes={"ReceiveMessageWaitTimeSeconds": "1"})
    start = time.monotonic()
    assert "Messages" not in c.receive_message(QueueUrl=url)
    assert 0.9 < time.monotonic() - start < 3


def test_delays_per_queue_and_per_message(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="delays", Attributes={"DelaySeconds": "1"})["QueueUrl"]
    c.send_message(QueueUrl=url, MessageBody="queue-delay")
    c.send_message(QueueUrl=url, MessageBody="no-delay", DelaySeconds=0)
    assert [m["Body"] for m in c.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == ["no-delay"]
    got = receive_all(c, url, 1, timeout_s=5)
    assert [m["Body"] for m in got] == ["queue-delay"]
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="x", DelaySeconds=901)
    assert error_code(e) == "InvalidParameterValue"


def test_batches_and_partial_failures(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="batch")["QueueUrl"]
    r = c.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "one", "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
            {"Id": "b", "MessageBody": "bad \x01 char"},
            {"Id": "c", "MessageBody": "three", "DelaySeconds": 0},
        ],
    )
    assert sorted(s["Id"] for s in r["Successful"]) == ["a", "c"]
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in r["Failed"]] == [("b", "InvalidMessageContents", True)]
    got = receive_all(c, url, 2)
    assert sorted(m["Body"] for m in got) == ["one", "three"]
    d = c.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
        + [{"Id": "junk", "ReceiptHandle": "junk"}],
    )
    assert sorted(s["Id"] for s in d["Successful"]) == ["d0", "d1"]
    assert [(f["Id"], f["Code"]) for f in d["Failed"]] == [("junk", "ReceiptHandleIsInvalid")]
    c.send_message(QueueUrl=url, MessageBody="vis")
    m = c.receive_message(QueueUrl=url)["Messages"][0]
    v = c.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "ok", "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": "zzz", "VisibilityTimeout": 0},
        ],
    )
    assert [s["Id"] for s in v["Successful"]] == ["ok"]
    assert [f["Id"] for f in v["Failed"]] == ["bad"]
    assert c.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "vis"


def test_batch_rules(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="rules")["QueueUrl"]
    cases = [
        ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
        ([{"Id": str(i), "MessageBody": "x"} for i in range(11)], "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"),
        ([{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}], "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
        ([{"Id": "bad id!", "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
        ([{"Id": "x" * 81, "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
        (
            [{"Id": str(i), "MessageBody": "x" * 200_000} for i in range(6)],
            "AWS.SimpleQueueService.BatchRequestTooLong",
        ),
    ]
    for entries, code in cases:
        with pytest.raises(ClientError) as e:
            c.send_message_batch(QueueUrl=url, Entries=entries)
        assert error_code(e) == code
    with pytest.raises(c.exceptions.EmptyBatchRequest):
        c.delete_message_batch(QueueUrl=url, Entries=[])
    with pytest.raises(c.exceptions.TooManyEntriesInBatchRequest):
        c.change_message_visibility_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": "h", "VisibilityTimeout": 1} for i in range(11)]
        )


def test_limits_and_validation(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="limits", Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="x" * 1025)
    assert error_code(e) == "InvalidParameterValue"
    c.send_message(QueueUrl=url, MessageBody="x" * 1024)
    with pytest.raises(c.exceptions.InvalidMessageContents) as e:
        c.send_message(QueueUrl=url, MessageBody="nul \x00")
    assert error_code(e) == "InvalidMessageContents"
    with pytest.raises(ClientError) as e:
        c.send_message(
            QueueUrl=url,
            MessageBody="x",
            MessageAttributes={f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)},
        )
    assert error_code(e) == "InvalidParameterValue"
    for bad in [
        {"AWS.reserved": {"DataType": "String", "StringValue": "v"}},
        {"a": {"DataType": "Strong", "StringValue": "v"}},
        {"a": {"DataType": "Number", "StringValue": "not a number"}},
        {"a": {"DataType": "String", "StringValue": ""}},
    ]:
        with pytest.raises(ClientError) as e:
            c.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=bad)
        assert error_code(e) == "InvalidParameterValue", bad
    for kw in [{"MaxNumberOfMessages": 11}, {"MaxNumberOfMessages": 0}, {"WaitTimeSeconds": 21}, {"VisibilityTimeout": -1}]:
        with pytest.raises(ClientError) as e:
            c.receive_message(QueueUrl=url, **kw)
        assert error_code(e) == "InvalidParameterValue", kw
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="d")
    assert error_code(e) == "InvalidParameterValue"


def test_trace_header_and_system_attribute_md5(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="trace")["QueueUrl"]
    r = c.send_message(
        QueueUrl=url,
        MessageBody="t",
        MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-abc"}},
    )
    assert "MD5OfMessageSystemAttributes" in r
    m = c.receive_message(QueueUrl=url, MessageSystemAttributeNames=["AWSTraceHeader"])["Messages"][0]
    assert m["Attributes"] == {"AWSTraceHeader": "Root=1-abc"}


def test_retention_period_expires_messages(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="short", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    # The minimum is 60 s; check only that the message is there before it.
    c.send_message(QueueUrl=url, MessageBody="kept")
    assert c.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "kept"
