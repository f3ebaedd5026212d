"""SQS durability with boto3 across SIGKILL: every acknowledged send is
there after a restart, deleted messages stay gone, in-flight messages stay
hidden until their visibility deadline (then come back with their receive
count), FIFO groups stay locked meanwhile, and FIFO deduplication holds."""

from __future__ import annotations

import threading
import time

from botocore.exceptions import BotoCoreError, ClientError

from sqs_util import receive_all, sqs_client

VISIBILITY_S = 8  # long enough for a restart on a busy machine


def test_acknowledged_sends_survive_sigkill_mid_load(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="load")["QueueUrl"]
    acked: list[str] = []
    stop = threading.Event()

    def sender():
        client = sqs_client(ferry, connect_timeout=2, read_timeout=5)
        i = 0
        while not stop.is_set():
            body = f"m{i}"
            entries = [{"Id": f"e{j}", "MessageBody": f"{body}-{j}"} for j in range(5)]
            try:
                r = client.send_message_batch(QueueUrl=url, Entries=entries)
            except (BotoCoreError, ClientError):
                return  # the server is gone
            ok = {s["Id"] for s in r["Successful"]}
            acked.extend(e["MessageBody"] for e in entries if e["Id"] in ok)
            i += 1

    t = threading.Thread(target=sender)
    t.start()
    time.sleep(1.5)
    ferry.kill9()
    stop.set()
    t.join()
    assert len(acked) > 20, "the sender should have got going before the kill"
    ferry.start()
    c = sqs_client(ferry)
    got = receive_all(c, url, len(acked), timeout_s=30, VisibilityTimeout=60)
    bodies = {m["Body"] for m in got}
    missing = [b for b in acked if b not in bodies]
    assert missing == []


def test_deleted_in_flight_and_deduplicated_state_survives_sigkill(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="state")["QueueUrl"]
    fifo = c.create_queue(QueueName="state.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    for i in range(30):
        c.send_message(QueueUrl=url, MessageBody=f"m{i}")
    # Ten deleted, five in flight, fifteen ready.
    deleted = receive_all(c, url, 10, VisibilityTimeout=600)[:10]
    for m in deleted:
        c.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    hidden_at = time.monotonic()
    in_flight = c.receive_message(QueueUrl=url, MaxNumberOfMessages=5, VisibilityTimeout=VISIBILITY_S)["Messages"]
    assert len(in_flight) == 5
    fifo_ids = [
        c.send_message(QueueUrl=fifo, MessageBody=f"f{i}", MessageGroupId="g", MessageDeduplicationId=f"d{i}")[
            "MessageId"
        ]
        for i in range(3)
    ]
    f0 = c.receive_message(QueueUrl=fifo, VisibilityTimeout=VISIBILITY_S)["Messages"][0]
    assert f0["Body"] == "f0"

    ferry.kill9()
    ferry.start()
    c = sqs_client(ferry)
    url = c.get_queue_url(QueueName="state")["QueueUrl"]
    fifo = c.get_queue_url(QueueName="state.fifo")["QueueUrl"]

    a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (a["ApproximateNumberOfMessages"], a["ApproximateNumberOfMessagesNotVisible"]) == ("15", "5")
    # Deduplication still holds: a retried send gets the first one's id.
    again = c.send_message(QueueUrl=fifo, MessageBody="f0 again", MessageGroupId="g", MessageDeduplicationId="d0")
    assert again["MessageId"] == fifo_ids[0]
    # The FIFO group is still locked by f0, hidden until its deadline.
    assert "Messages" not in c.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10)
    ready = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)["Messages"]
    ready += c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600).get("Messages", [])
    gone = {m["Body"] for m in deleted}
    hidden = {m["Body"] for m in in_flight}
    assert len(ready) == 15
    assert not {m["Body"] for m in ready} & (gone | hidden)
    # A receipt handle from before the crash still deletes its message.
    c.delete_message(QueueUrl=url, ReceiptHandle=in_flight[0]["ReceiptHandle"])
    assert time.monotonic() - hidden_at < VISIBILITY_S, "the restart took too long for this test"

    # At the deadline the rest come back, received for the second time.
    back = receive_all(c, url, 4, timeout_s=VISIBILITY_S + 10, AttributeNames=["ApproximateReceiveCount"])
    assert sorted(m["Body"] for m in back) == sorted(m["Body"] for m in in_flight[1:])
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in back} == {"2"}
    got = c.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10, WaitTimeSeconds=5, AttributeNames=["All"])
    assert [m["Body"] for m in got["Messages"]] == ["f0", "f1", "f2"]
    assert got["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"
    assert time.monotonic() - hidden_at >= VISIBILITY_S - 0.5
