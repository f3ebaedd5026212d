"""SQS queue actions with boto3 (JSON protocol): create, URLs, listing,
attributes, purge, delete, tags, permissions, and their errors."""

from __future__ import annotations

import json
import urllib.request

import pytest
from botocore.exceptions import ClientError

from sqs_util import ACCOUNT, arn, error_code, sqs_client


def test_create_get_url_list_and_delete(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="orders")["QueueUrl"]
    assert url == f"{ferry.sqs_endpoint}/{ACCOUNT}/orders"
    # Idempotent with the same (or no) attributes.
    assert c.create_queue(QueueName="orders")["QueueUrl"] == url
    assert c.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "30"})["QueueUrl"] == url
    assert c.get_queue_url(QueueName="orders")["QueueUrl"] == url
    for n in ["orders-dlq", "payments", "ordersX"]:
        c.create_queue(QueueName=n)
    assert c.list_queues()["QueueUrls"] == [
        f"{ferry.sqs_endpoint}/{ACCOUNT}/{n}" for n in ["orders", "orders-dlq", "ordersX", "payments"]
    ]
    assert [u.rsplit("/", 1)[1] for u in c.list_queues(QueueNamePrefix="orders")["QueueUrls"]] == [
        "orders",
        "orders-dlq",
        "ordersX",
    ]
    assert "QueueUrls" not in c.list_queues(QueueNamePrefix="nothing")
    # Pages of two.
    seen, token = [], None
    while True:
        kw = {"MaxResults": 2, **({"NextToken": token} if token else {})}
        r = c.list_queues(**kw)
        seen += [u.rsplit("/", 1)[1] for u in r["QueueUrls"]]
        token = r.get("NextToken")
        if not token:
            break
    assert seen == ["orders", "orders-dlq", "ordersX", "payments"]
    c.delete_queue(QueueUrl=url)
    with pytest.raises(c.exceptions.QueueDoesNotExist) as e:
        c.get_queue_url(QueueName="orders")
    assert error_code(e) == "AWS.SimpleQueueService.NonExistentQueue"
    # Re-creating the name within 60 s is refused.
    with pytest.raises(c.exceptions.QueueDeletedRecently) as e:
        c.create_queue(QueueName="orders")
    assert error_code(e) == "AWS.SimpleQueueService.QueueDeletedRecently"


def test_queue_url_path_is_reachable(ferry):
    """Requests sent to the queue URL's path (as some SDKs do) work too."""
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="by-path")["QueueUrl"]
    req = urllib.request.Request(
        url,
        data=json.dumps({"MessageBody": "via path"}).encode(),
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.SendMessage"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["MD5OfMessageBody"]
    assert c.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "via path"


def test_queue_name_rules(ferry):
    c = sqs_client(ferry)
    for bad in ["has space", "x" * 81, "dots.are.bad", ""]:
        with pytest.raises(ClientError) as e:
            c.create_queue(QueueName=bad)
        assert error_code(e) in ("InvalidParameterValue", "MissingParameter"), bad
    with pytest.raises(ClientError) as e:
        c.create_queue(QueueName="q.fifo")
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        c.create_queue(QueueName="q", Attributes={"FifoQueue": "true"})
    assert error_code(e) == "InvalidParameterValue"
    c.create_queue(QueueName="x" * 80)


def test_attributes_defaults_set_and_errors(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="attrs", Attributes={"DelaySeconds": "5", "VisibilityTimeout": "60"})["QueueUrl"]
    a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert a["QueueArn"] == arn("attrs")
    assert a["DelaySeconds"] == "5"
    assert a["VisibilityTimeout"] == "60"
    assert a["MaximumMessageSize"] == "1048576"
    assert a["MessageRetentionPeriod"] == "345600"
    assert a["ReceiveMessageWaitTimeSeconds"] == "0"
    for k in [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]:
        assert a[k] == "0"
    assert int(a["CreatedTimestamp"]) > 1_600_000_000
    assert "FifoQueue" not in a
    only = c.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert only == {"VisibilityTimeout": "60"}
    # Different attributes on re-create: QueueNameExists.
    with pytest.raises(c.exceptions.QueueNameExists) as e:
        c.create_queue(QueueName="attrs", Attributes={"VisibilityTimeout": "61"})
    assert error_code(e) == "QueueAlreadyExists"
    c.set_queue_attributes(
        QueueUrl=url,
        Attributes={"VisibilityTimeout": "10", "MessageRetentionPeriod": "60", "ReceiveMessageWaitTimeSeconds": "20"},
    )
    a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (a["VisibilityTimeout"], a["MessageRetentionPeriod"], a["ReceiveMessageWaitTimeSeconds"]) == (
        "10",
        "60",
        "20",
    )
    for k, v in [
        ("VisibilityTimeout", "43201"),
        ("DelaySeconds", "901"),
        ("MessageRetentionPeriod", "59"),
        ("MaximumMessageSize", "1048577"),
        ("ReceiveMessageWaitTimeSeconds", "21"),
        ("VisibilityTimeout", "abc"),
    ]:
        with pytest.raises(ClientError) as e:
            c.set_queue_attributes(QueueUrl=url, Attributes={k: v})
        assert error_code(e) == "InvalidAttributeValue", (k, v)
    with pytest.raises(ClientError) as e:
        c.set_queue_attributes(QueueUrl=url, Attributes={"NoSuchAttribute": "1"})
    assert error_code(e) == "InvalidAttributeName"
    with pytest.raises(ClientError) as e:
        c.get_queue_attributes(QueueUrl=url, AttributeNames=["Bogus"])
    assert error_code(e) == "InvalidAttributeName"
    with pytest.raises(ClientError) as e:
        c.set_queue_attributes(QueueUrl=url, Attributes={"QueueArn": "x"})
    assert error_code(e) == "InvalidAttributeName"


def test_counts_purge_and_purge_in_progress(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="counts")["QueueUrl"]
    for i in range(3):
        c.send_message(QueueUrl=url, MessageBody=f"m{i}")
    c.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    c.receive_message(QueueUrl=url, VisibilityTimeout=60)
    a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (
        a["ApproximateNumberOfMessages"],
        a["ApproximateNumberOfMessagesNotVisible"],
        a["ApproximateNumberOfMessagesDelayed"],
    ) == ("2", "1", "1")
    c.purge_queue(QueueUrl=url)
    a = c.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert a["ApproximateNumberOfMessages"] == "0"
    with pytest.raises(c.exceptions.PurgeQueueInProgress) as e:
        c.purge_queue(QueueUrl=url)
    assert error_code(e) == "AWS.SimpleQueueService.PurgeQueueInProgress"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_tags(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="tagged", tags={"team": "payments"})["QueueUrl"]
    assert c.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "payments"}
    c.tag_queue(QueueUrl=url, Tags={"env": "dev", "team": "orders"})
    assert c.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "orders", "env": "dev"}
    c.untag_queue(QueueUrl=url, TagKeys=["team"])
    assert c.list_queue_tags(QueueUrl=url)["Tags"] == {"env": "dev"}
    c.untag_queue(QueueUrl=url, TagKeys=["env"])
    assert "Tags" not in c.list_queue_tags(QueueUrl=url)


def test_permissions_are_stored_as_a_policy(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="shared")["QueueUrl"]
    c.add_permission(QueueUrl=url, Label="p1", AWSAccountIds=["111122223333"], Actions=["SendMessage"])
    policy = json.loads(c.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    assert policy["Statement"][0]["Sid"] == "p1"
    assert policy["Statement"][0]["Action"] == ["SQS:SendMessage"]
    with pytest.raises(ClientError) as e:
        c.add_permission(QueueUrl=url, Label="p1", AWSAccountIds=["1"], Actions=["*"])
    assert error_code(e) == "InvalidParameterValue"
    c.remove_permission(QueueUrl=url, Label="p1")
    assert "Attributes" not in c.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
    with pytest.raises(ClientError) as e:
        c.remove_permission(QueueUrl=url, Label="p1")
    assert error_code(e) == "InvalidParameterValue"


def test_errors_on_missing_queues_and_parameters(ferry):
    c = sqs_client(ferry)
    missing = f"{ferry.sqs_endpoint}/{ACCOUNT}/missing"
    for call in [
        lambda: c.send_message(QueueUrl=missing, MessageBody="x"),
        lambda: c.receive_message(QueueUrl=missing),
        lambda: c.delete_queue(QueueUrl=missing),
        lambda: c.get_queue_attributes(QueueUrl=missing),
        lambda: c.purge_queue(QueueUrl=missing),
        lambda: c.list_queue_tags(QueueUrl=missing),
    ]:
        with pytest.raises(c.exceptions.QueueDoesNotExist) as e:
            call()
        assert error_code(e) == "AWS.SimpleQueueService.NonExistentQueue"
        assert e.value.response["Error"]["Type"] == "Sender"
    url = c.create_queue(QueueName="p")["QueueUrl"]
    with pytest.raises(ClientError) as e:
        c.send_message(QueueUrl=url, MessageBody="")
    assert error_code(e) == "MissingParameter"
