"""SQS FIFO queues with boto3: group ids, strict order per group, group
locking while a message is in flight, order across groups under concurrent
consumers, deduplication (explicit ids, content-based, per-group scope),
sequence numbers, ReceiveRequestAttemptId retries and the high-throughput
attributes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from botocore.exceptions import ClientError

from sqs_util import error_code, receive_all, sqs_client


def fifo_queue(c, name="jobs.fifo", **attrs):
    attributes = {"FifoQueue": "true", **attrs}
    return c.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]


def test_fifo_send_rules(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c)
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="d")
    assert error_code(e) == "MissingParameter"
    # Neither a deduplication id nor content-based deduplication.
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g")
    assert error_code(e) == "InvalidParameterValue"
    # FIFO queues take delays per queue only.
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g", MessageDeduplicationId="d", DelaySeconds=5)
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g" * 129, MessageDeduplicationId="d")
    assert error_code(e) == "InvalidParameterValue"
    a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (a["FifoQueue"], a["ContentBasedDeduplication"], a["DeduplicationScope"], a["FifoThroughputLimit"]) == (
        "true",
        "false",
        "queue",
        "perQueue",
    )


def test_order_within_a_group_and_group_locking(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c, VisibilityTimeout="30")
    sent = []
    for i in range(6):
        g = "a" if i % 2 == 0 else "b"
        r = c.send_message(QueueUrl=url, MessageBody=f"{g}{i}", MessageGroupId=g, MessageDeduplicationId=f"d{i}")
        sent.append(r["SequenceNumber"])
    # Sequence numbers: strings of digits, growing with every send.
    assert all(s.isdigit() and len(s) >= 20 for s in sent)
    assert [int(s) for s in sent] == sorted(int(s) for s in sent) and len(set(sent)) == 6

    # One message: the oldest, of group a. Group a is now locked; b is not.
    first = c.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in first] == ["a0"]
    assert first[0]["Attributes"]["MessageGroupId"] == "a"
    assert first[0]["Attributes"]["SequenceNumber"] == sent[0]
    assert first[0]["Attributes"]["MessageDeduplicationId"] == "d0"
    rest = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    # Several messages of one free group may come at once, in order.
    assert [m["Body"] for m in rest] == ["b1", "b3", "b5"]
    # Both groups have messages in flight: nothing more.
    assert "Messages" not in c.receive_message(QueueUrl=url, MaxNumberOfMessages=10)

    # Deleting a0 frees group a: a2 comes next, not a4.
    c.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
    nxt = c.receive_message(QueueUrl=url)["Messages"]
    assert [m["Body"] for m in nxt] == ["a2"]
    # a2 back to the queue (visibility 0): it is the next of its group again.
    c.change_message_visibility(QueueUrl=url, ReceiptHandle=nxt[0]["ReceiptHandle"], VisibilityTimeout=0)
    again = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["ApproximateReceiveCount"])
    assert [(m["Body"], m["Attributes"]["ApproximateReceiveCount"]) for m in again["Messages"]] == [
        ("a2", "2"),
        ("a4", "1"),
    ]


def test_a_long_poll_wakes_when_a_group_is_released(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c)
    for i in range(2):
        c.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g", MessageDeduplicationId=f"d{i}")
    m0 = c.receive_message(QueueUrl=url)["Messages"][0]
    other = sqs_client(ferry)
    t = threading.Timer(0.5, lambda: other.delete_message(QueueUrl=url, ReceiptHandle=m0["ReceiptHandle"]))
    start = time.monotonic()
    t.start()
    r = c.receive_message(QueueUrl=url, WaitTimeSeconds=10)
    t.join()
    assert [m["Body"] for m in r["Messages"]] == ["m1"]
    assert time.monotonic() - start < 5


def test_visibility_expiry_redelivers_the_head_of_the_group_first(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c, VisibilityTimeout="1")
    for i in range(3):
        c.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g", MessageDeduplicationId=f"d{i}")
    assert [m["Body"] for m in c.receive_message(QueueUrl=url, MaxNumberOfMessages=2)["Messages"]] == ["m0", "m1"]
    time.sleep(1.3)
    got = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2, VisibilityTimeout=30)["Messages"]
    assert [m["Body"] for m in got] == ["m0", "m1", "m2"]


def test_order_across_groups_under_concurrent_consumers(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c, ContentBasedDeduplication="true", VisibilityTimeout="30")
    groups = [f"customer-{i}" for i in range(5)]
    per_group = 20
    for n in range(per_group):
        entries = [
            {"Id": f"e{gi}", "MessageBody": f"{g}:{n}", "MessageGroupId": g} for gi, g in enumerate(groups)
        ]
        r = c.send_message_batch(QueueUrl=url, Entries=entries)
        assert not r.get("Failed")
    lock = threading.Lock()
    held: dict[str, str] = {}  # group -> consumer holding one of its messages
    processed: dict[str, list[int]] = defaultdict(list)
    problems: list[str] = []
    total = len(groups) * per_group

    def consumer(name: str):
        client = sqs_client(ferry)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if sum(len(v) for v in processed.values()) >= total:
                    return
            msgs = client.receive_message(QueueUrl=url, MaxNumberOfMessages=3, WaitTimeSeconds=1).get("Messages", [])
            with lock:
                for m in msgs:
                    g = m["Body"].split(":")[0]
                    if held.get(g, name) != name:
                        problems.append(f"{name} got {m['Body']} while {held[g]} holds group {g}")
                    held[g] = name
            for m in msgs:
                time.sleep(0.005)  # "process" it
                g, n = m["Body"].split(":")
                with lock:
                    processed[g].append(int(n))
                    if m is msgs[-1] or all(x["Body"].split(":")[0] != g for x in msgs[msgs.index(m) + 1 :]):
                        # The consumer's last message of this group: release
                        # it before the delete makes the group receivable.
                        held.pop(g, None)
                client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert {g: processed[g] for g in groups} == {g: list(range(per_group)) for g in groups}


def test_deduplication_by_id_and_by_content(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c)
    a = c.send_message(QueueUrl=url, MessageBody="pay 10", MessageGroupId="g", MessageDeduplicationId="order-1")
    b = c.send_message(QueueUrl=url, MessageBody="pay 10 again", MessageGroupId="g", MessageDeduplicationId="order-1")
    assert (b["MessageId"], b["SequenceNumber"]) == (a["MessageId"], a["SequenceNumber"])
    # The id is remembered after the message is received and deleted, too.
    m = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [x["Body"] for x in m] == ["pay 10"]
    c.delete_message(QueueUrl=url, ReceiptHandle=m[0]["ReceiptHandle"])
    c.send_message(QueueUrl=url, MessageBody="pay 10", MessageGroupId="g", MessageDeduplicationId="order-1")
    assert "Messages" not in c.receive_message(QueueUrl=url)
    # Batches deduplicate too, within the batch and against earlier sends.
    r = c.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "x", "MessageBody": "one", "MessageGroupId": "g", "MessageDeduplicationId": "k1"},
            {"Id": "y", "MessageBody": "one again", "MessageGroupId": "g", "MessageDeduplicationId": "k1"},
            {"Id": "z", "MessageBody": "dup of earlier", "MessageGroupId": "g", "MessageDeduplicationId": "order-1"},
        ],
    )
    ids = {s["Id"]: s["MessageId"] for s in r["Successful"]}
    assert ids["x"] == ids["y"] and ids["z"] == a["MessageId"]
    assert [x["Body"] for x in receive_all(c, url, 1, timeout_s=2)] == ["one"]

    cbd = fifo_queue(c, name="cbd.fifo", ContentBasedDeduplication="true")
    s1 = c.send_message(QueueUrl=cbd, MessageBody="same body", MessageGroupId="g1")
    s2 = c.send_message(QueueUrl=cbd, MessageBody="same body", MessageGroupId="g2")
    s3 = c.send_message(QueueUrl=cbd, MessageBody="other body", MessageGroupId="g1")
    assert s1["MessageId"] == s2["MessageId"] != s3["MessageId"]
    got = c.receive_message(QueueUrl=cbd, MaxNumberOfMessages=10, AttributeNames=["MessageDeduplicationId"])
    import hashlib

    assert sorted(m["Body"] for m in got["Messages"]) == ["other body", "same body"]
    dedup_ids = {m["Body"]: m["Attributes"]["MessageDeduplicationId"] for m in got["Messages"]}
    assert dedup_ids["same body"] == hashlib.sha256(b"same body").hexdigest()
    # An explicit id wins over the content.
    c.send_message(QueueUrl=cbd, MessageBody="same body", MessageGroupId="g3", MessageDeduplicationId="fresh")
    assert len(receive_all(c, cbd, 1, timeout_s=2)) == 1


def test_high_throughput_mode_deduplicates_per_group(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c, name="ht.fifo", DeduplicationScope="messageGroup", FifoThroughputLimit="perMessageGroupId")
    a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["DeduplicationScope", "FifoThroughputLimit"])
    assert a["Attributes"] == {"DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId"}
    s1 = c.send_message(QueueUrl=url, MessageBody="a", MessageGroupId="g1", MessageDeduplicationId="same")
    s2 = c.send_message(QueueUrl=url, MessageBody="b", MessageGroupId="g2", MessageDeduplicationId="same")
    s3 = c.send_message(QueueUrl=url, MessageBody="c", MessageGroupId="g1", MessageDeduplicationId="same")
    assert s1["MessageId"] != s2["MessageId"] and s3["MessageId"] == s1["MessageId"]
    assert sorted(m["Body"] for m in receive_all(c, url, 2, timeout_s=3)) == ["a", "b"]
    # perMessageGroupId needs the messageGroup scope.
    with pytest.raises(ClientError) as e:
        c.set_queue_attributes(QueueUrl=url, Attributes={"DeduplicationScope": "queue"})
    assert error_code(e) == "InvalidAttributeValue"
    with pytest.raises(ClientError) as e:
        fifo_queue(c, name="bad.fifo", FifoThroughputLimit="perMessageGroupId")
    assert error_code(e) == "InvalidAttributeValue"
    with pytest.raises(ClientError) as e:
        fifo_queue(c, name="bad2.fifo", DeduplicationScope="everywhere")
    assert error_code(e) == "InvalidAttributeValue"
    # FIFO-only attributes on a standard queue are unknown there.
    with pytest.raises(ClientError) as e:
        c.create_queue(QueueName="std", Attributes={"ContentBasedDeduplication": "true"})
    assert error_code(e) == "InvalidAttributeName"
    # The queue type cannot change.
    with pytest.raises(ClientError) as e:
        c.set_queue_attributes(QueueUrl=url, Attributes={"FifoQueue": "false"})
    assert error_code(e) == "InvalidAttributeValue"


def test_receive_request_attempt_id_retries_get_the_same_messages(ferry):
    c = sqs_client(ferry)
    url = fifo_queue(c, ContentBasedDeduplication="true", VisibilityTimeout="30")
    for i in range(4):
        c.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g")
    first = c.receive_message(QueueUrl=url, MaxNumberOfMessages=2, ReceiveRequestAttemptId="attempt-1")["Messages"]
    assert [m["Body"] for m in first] == ["m0", "m1"]
    # The response was "lost": the retry gets the same messages and handles.
    retry = c.receive_message(QueueUrl=url, MaxNumberOfMessages=2, ReceiveRequestAttemptId="attempt-1")["Messages"]
    assert [(m["Body"], m["ReceiptHandle"]) for m in retry] == [(m["Body"], m["ReceiptHandle"]) for m in first]
    # Another attempt finds the group locked.
    assert "Messages" not in c.receive_message(QueueUrl=url, ReceiveRequestAttemptId="attempt-2")
    # Once a message of the attempt is deleted, the attempt is used up.
    for m in first:
        c.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    nxt = c.receive_message(QueueUrl=url, MaxNumberOfMessages=2, ReceiveRequestAttemptId="attempt-1")["Messages"]
    assert [m["Body"] for m in nxt] == ["m2", "m3"]
    with pytest.raises(ClientError) as e:
        c.receive_message(QueueUrl=url, ReceiveRequestAttemptId="bad id with spaces")
    assert error_code(e) == "InvalidParameterValue"
