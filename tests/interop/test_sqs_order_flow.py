"""The seed article's e-commerce order flow on SQS with boto3: the order
service publishes OrderCreated events; the payment service consumes them
and publishes PaymentCompleted. One order hits a bug in the payment
service, fails three times, lands in the dead-letter queue
(maxReceiveCount=3), and after the fix is redriven with
StartMessageMoveTask and paid."""

from __future__ import annotations

import json
import time

from sqs_util import arn, sqs_client


class PaymentService:
    """Charges the customer of each OrderCreated event; a bug makes it fail
    on currencies it does not know yet."""

    def __init__(self, client, orders_url: str, events_url: str):
        self.c = client
        self.orders_url = orders_url
        self.events_url = events_url
        self.currencies = {"USD"}
        self.failures: dict[str, int] = {}

    def charge(self, order: dict) -> None:
        if order["currency"] not in self.currencies:
            raise ValueError(f"unsupported currency {order['currency']}")

    def poll_once(self) -> int:
        """One receive; returns how many orders it paid."""
        r = self.c.receive_message(QueueUrl=self.orders_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        paid = 0
        for m in r.get("Messages", []):
            order = json.loads(m["Body"])
            try:
                self.charge(order)
            except ValueError:
                self.failures[order["id"]] = self.failures.get(order["id"], 0) + 1
                # Give it back at once for a retry (instead of waiting out
                # the visibility timeout).
                self.c.change_message_visibility(
                    QueueUrl=self.orders_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                )
                continue
            self.c.send_message(
                QueueUrl=self.events_url,
                MessageBody=json.dumps({"type": "PaymentCompleted", "order": order["id"]}),
            )
            self.c.delete_message(QueueUrl=self.orders_url, ReceiptHandle=m["ReceiptHandle"])
            paid += 1
        return paid


def test_failed_order_goes_to_the_dlq_and_is_redriven_after_the_fix(ferry):
    c = sqs_client(ferry)
    dlq = c.create_queue(QueueName="order-created-dlq")["QueueUrl"]
    orders = c.create_queue(
        QueueName="order-created",
        Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn("order-created-dlq"), "maxReceiveCount": "3"}),
            "VisibilityTimeout": "30",
        },
    )["QueueUrl"]
    events = c.create_queue(QueueName="payment-events")["QueueUrl"]

    # The order service publishes and moves on.
    for oid, currency in [("o-1", "USD"), ("o-2", "EUR"), ("o-3", "USD")]:
        c.send_message(
            QueueUrl=orders,
            MessageBody=json.dumps({"type": "OrderCreated", "id": oid, "currency": currency, "total": 100}),
            MessageAttributes={"event": {"DataType": "String", "StringValue": "OrderCreated"}},
        )

    payments = PaymentService(sqs_client(ferry), orders, events)
    paid = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        paid += payments.poll_once()
        depth = c.get_queue_attributes(
            QueueUrl=orders, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        if paid == 2 and depth == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}:
            break
    assert paid == 2
    # The EUR order failed exactly three times, then went to the DLQ.
    assert payments.failures == {"o-2": 3}
    dead = c.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert dead["ApproximateNumberOfMessages"] == "1"
    # Engineers look at it: where it came from and what it was.
    peek = c.receive_message(QueueUrl=dlq, AttributeNames=["All"], MessageAttributeNames=["All"], VisibilityTimeout=0)
    [m] = peek["Messages"]
    assert json.loads(m["Body"])["id"] == "o-2"
    assert m["Attributes"]["DeadLetterQueueSourceArn"] == arn("order-created")
    assert m["MessageAttributes"]["event"]["StringValue"] == "OrderCreated"
    assert c.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [orders]

    # The fix ships; the DLQ is redriven to its source.
    payments.currencies.add("EUR")
    c.start_message_move_task(SourceArn=arn("order-created-dlq"))
    deadline = time.monotonic() + 10
    while c.list_message_move_tasks(SourceArn=arn("order-created-dlq"))["Results"][0]["Status"] != "COMPLETED":
        assert time.monotonic() < deadline, "the move task did not finish"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while paid < 3 and time.monotonic() < deadline:
        paid += payments.poll_once()
    assert paid == 3
    assert payments.failures == {"o-2": 3}

    # Every order was paid once, and both queues are empty.
    got = []
    while True:
        r = c.receive_message(QueueUrl=events, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not r:
            break
        got += [json.loads(x["Body"])["order"] for x in r]
        for x in r:
            c.delete_message(QueueUrl=events, ReceiptHandle=x["ReceiptHandle"])
    assert sorted(got) == ["o-1", "o-2", "o-3"]
    for url in (orders, dlq):
        a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (a["ApproximateNumberOfMessages"], a["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0"), url
