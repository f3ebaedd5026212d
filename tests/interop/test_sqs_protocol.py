"""The SQS wire protocols: the query protocol (a botocore client forced to it,
and raw form posts with their XML checked), every error code of the issue
with its HTTP status, JSON `__type` and `x-amzn-query-error` header, and
SigV4-signed requests (headers, to `/` and to a queue URL's path)."""

from __future__ import annotations

import copy
import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import botocore.session
import pytest
from botocore.exceptions import ClientError

from sqs_util import ACCOUNT, REGION, arn, error_code, sqs_client

NS = "{http://queue.amazonaws.com/doc/2012-11-05/}"


def legacy_query_model(model: dict) -> dict:
    """The SQS model as botocore had it before 1.34.90 (the query protocol):
    the current model with the query-only traits put back, i.e. result
    wrappers and the XML/form element names (`Attribute.N.Name`,
    `SendMessageBatchRequestEntry.N`, `<Message>`...)."""
    model = copy.deepcopy(model)
    model["metadata"]["protocol"] = "query"
    model["metadata"]["protocols"] = ["query"]
    for op, spec in model["operations"].items():
        if "output" in spec:
            spec["output"]["resultWrapper"] = f"{op}Result"
    for name, shape in model["shapes"].items():
        if shape["type"] == "list" and shape.get("flattened"):
            singular = {
                "BinaryList": "BinaryListValue",
                "StringList": "StringListValue",
                "MessageSystemAttributeList": "MessageSystemAttributeName",
            }
            shape["member"]["locationName"] = singular.get(name, name.removesuffix("List"))
        elif shape["type"] == "map" and shape.get("flattened"):
            shape["key"]["locationName"] = "Key" if name == "TagMap" else "Name"
            shape["value"]["locationName"] = "Value"
        elif shape["type"] == "structure":
            for member_name, member in shape["members"].items():
                target = model["shapes"][member["shape"]]
                if target["type"] == "map" or member_name in ("StringListValues", "BinaryListValues"):
                    member["locationName"] = {"tags": "Tag", "Tags": "Tag"}.get(
                        member_name, member_name.removesuffix("s")
                    )
    return model


def query_client(ferry, tmp_path):
    """A boto3 SQS client that speaks the query protocol as older SDKs do:
    form-encoded requests, XML responses, MD5 validation on."""
    current = botocore.session.get_session().get_service_model("sqs")._service_description
    model_dir = tmp_path / "models" / "sqs" / "2012-11-05"
    model_dir.mkdir(parents=True)
    (model_dir / "service-2.json").write_text(json.dumps(legacy_query_model(current)))
    # A session of its own, so that no cached model is used.
    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.insert(0, str(tmp_path / "models"))
    return boto3.Session(botocore_session=session).client(
        "sqs",
        endpoint_url=ferry.sqs_endpoint,
        region_name=REGION,
        aws_access_key_id="ferry",
        aws_secret_access_key="ferry-secret",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def form_post(url: str, params: dict) -> tuple[int, dict, ET.Element]:
    body = urllib.parse.urlencode({"Version": "2012-11-05", **params}).encode()
    status, headers, data = post(url, body, {"Content-Type": "application/x-www-form-urlencoded"})
    return status, headers, ET.fromstring(data)


def json_post(url: str, action: str, params: dict, extra_headers: dict | None = None):
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}"}
    headers.update(extra_headers or {})
    status, h, data = post(url, json.dumps(params).encode(), headers)
    return status, {k.lower(): v for k, v in h.items()}, json.loads(data)


def test_botocore_forced_to_the_query_protocol(ferry, tmp_path):
    c = query_client(ferry, tmp_path)
    assert c.meta.service_model.protocol == "query"
    url = c.create_queue(QueueName="legacy", Attributes={"VisibilityTimeout": "5"}, tags={"t": "1"})["QueueUrl"]
    assert url == f"{ferry.sqs_endpoint}/{ACCOUNT}/legacy"
    assert c.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout", "QueueArn"])["Attributes"] == {
        "VisibilityTimeout": "5",
        "QueueArn": arn("legacy"),
    }
    attrs = {
        "s": {"DataType": "String", "StringValue": "x & <y>"},
        "b": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
        "n": {"DataType": "Number.int", "StringValue": "7"},
    }
    sent = c.send_message(QueueUrl=url, MessageBody="hello\r\nworld <&>", MessageAttributes=attrs)
    batch = c.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "a", "MessageBody": "b1"}, {"Id": "b", "MessageBody": "bad \x01"}],
    )
    assert [s["Id"] for s in batch["Successful"]] == ["a"]
    assert [(f["Id"], f["Code"]) for f in batch["Failed"]] == [("b", "InvalidMessageContents")]
    r = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"])
    msgs = {m["Body"]: m for m in r["Messages"]}
    m = msgs["hello\r\nworld <&>"]
    assert m["MessageId"] == sent["MessageId"]
    assert m["MessageAttributes"]["b"]["BinaryValue"] == b"\x00\xff"
    assert m["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert m["Attributes"]["ApproximateReceiveCount"] == "1"
    d = c.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": f"d{i}", "ReceiptHandle": x["ReceiptHandle"]} for i, x in enumerate(r["Messages"])]
    )
    assert len(d["Successful"]) == 2
    assert c.list_queue_tags(QueueUrl=url)["Tags"] == {"t": "1"}
    assert c.list_queues(QueueNamePrefix="leg")["QueueUrls"] == [url]
    with pytest.raises(ClientError) as e:
        c.get_queue_url(QueueName="nope")
    assert error_code(e) == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(ClientError) as e:
        c.send_message_batch(QueueUrl=url, Entries=[{"Id": "x", "MessageBody": "1"}, {"Id": "x", "MessageBody": "2"}])
    assert error_code(e) == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    c.delete_queue(QueueUrl=url)


def test_raw_form_posts_get_xml(ferry):
    ep = ferry.sqs_endpoint + "/"
    status, _, x = form_post(
        ep,
        {
            "Action": "CreateQueue",
            "QueueName": "raw",
            "Attribute.1.Name": "DelaySeconds",
            "Attribute.1.Value": "0",
        },
    )
    assert status == 200 and x.tag == f"{NS}CreateQueueResponse"
    url = x.find(f"{NS}CreateQueueResult/{NS}QueueUrl").text
    assert url.endswith(f"/{ACCOUNT}/raw")
    assert x.find(f"{NS}ResponseMetadata/{NS}RequestId").text
    status, _, x = form_post(
        url,
        {
            "Action": "SendMessage",
            "MessageBody": "form body",
            "MessageAttribute.1.Name": "k",
            "MessageAttribute.1.Value.DataType": "String",
            "MessageAttribute.1.Value.StringValue": "v",
        },
    )
    assert status == 200
    result = x.find(f"{NS}SendMessageResult")
    assert result.find(f"{NS}MD5OfMessageBody").text == hashlib.md5(b"form body").hexdigest()
    assert result.find(f"{NS}MessageId").text
    # The queue URL's path names the queue; AttributeName.N lists names.
    status, _, x = form_post(
        url,
        {"Action": "ReceiveMessage", "AttributeName.1": "SentTimestamp", "MessageAttributeName.1": "All"},
    )
    msg = x.find(f"{NS}ReceiveMessageResult/{NS}Message")
    assert msg.find(f"{NS}Body").text == "form body"
    assert [a.find(f"{NS}Name").text for a in msg.findall(f"{NS}Attribute")] == ["SentTimestamp"]
    ma = msg.find(f"{NS}MessageAttribute")
    assert (ma.find(f"{NS}Name").text, ma.find(f"{NS}Value/{NS}StringValue").text) == ("k", "v")
    status, _, x = form_post(
        ep, {"Action": "GetQueueAttributes", "QueueUrl": url, "AttributeName.1": "ApproximateNumberOfMessagesNotVisible"}
    )
    attr = x.find(f"{NS}GetQueueAttributesResult/{NS}Attribute")
    assert (attr.find(f"{NS}Name").text, attr.find(f"{NS}Value").text) == ("ApproximateNumberOfMessagesNotVisible", "1")
    # Errors: ErrorResponse with Type, Code, Message, and the header.
    status, headers, x = form_post(ep, {"Action": "GetQueueUrl", "QueueName": "missing"})
    assert status == 400 and x.tag == f"{NS}ErrorResponse"
    assert x.find(f"{NS}Error/{NS}Type").text == "Sender"
    assert x.find(f"{NS}Error/{NS}Code").text == "AWS.SimpleQueueService.NonExistentQueue"
    assert x.find(f"{NS}Error/{NS}Message").text
    assert x.find(f"{NS}RequestId").text
    assert {k.lower(): v for k, v in headers.items()}["x-amzn-query-error"] == (
        "AWS.SimpleQueueService.NonExistentQueue;Sender"
    )
    status, _, x = form_post(ep, {"Action": "NoSuchAction"})
    assert status == 400 and x.find(f"{NS}Error/{NS}Code").text == "InvalidAction"
    # A GET with the parameters in the query string works too (old SDKs).
    with urllib.request.urlopen(f"{ep}?Action=ListQueues&Version=2012-11-05", timeout=10) as r:
        x = ET.fromstring(r.read())
    assert [u.text for u in x.findall(f"{NS}ListQueuesResult/{NS}QueueUrl")] == [url]


# (action, params, HTTP status, __type, x-amzn-query-error code). `{url}`
# is the queue's URL, `{other}` a handle of the queue.
ERRORS = [
    ("GetQueueUrl", {"QueueName": "missing"}, 400, "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"),
    ("CreateQueue", {"QueueName": "q", "Attributes": {"DelaySeconds": "9"}}, 400, "QueueNameExists", "QueueAlreadyExists"),
    ("SendMessage", {"QueueUrl": "{url}", "MessageBody": "x", "DelaySeconds": 901}, 400, "InvalidParameterValue", "InvalidParameterValue"),
    ("SendMessage", {"QueueUrl": "{url}"}, 400, "MissingParameter", "MissingParameter"),
    ("DeleteMessage", {"QueueUrl": "{url}", "ReceiptHandle": "garbage"}, 404, "ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid"),
    ("GetQueueAttributes", {"QueueUrl": "{url}", "AttributeNames": ["Nope"]}, 400, "InvalidAttributeName", "InvalidAttributeName"),
    ("SetQueueAttributes", {"QueueUrl": "{url}", "Attributes": {"DelaySeconds": "-1"}}, 400, "InvalidAttributeValue", "InvalidAttributeValue"),
    ("SendMessageBatch", {"QueueUrl": "{url}", "Entries": [{"Id": str(i), "MessageBody": "x"} for i in range(11)]}, 400, "TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"),
    ("SendMessageBatch", {"QueueUrl": "{url}", "Entries": [{"Id": "a", "MessageBody": "x"}] * 2}, 400, "BatchEntryIdsNotDistinct", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
    ("DeleteMessageBatch", {"QueueUrl": "{url}", "Entries": []}, 400, "EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest"),
    ("ChangeMessageVisibilityBatch", {"QueueUrl": "{url}", "Entries": [{"Id": "no spaces!", "ReceiptHandle": "h", "VisibilityTimeout": 1}]}, 400, "InvalidBatchEntryId", "AWS.SimpleQueueService.InvalidBatchEntryId"),
    ("SendMessageBatch", {"QueueUrl": "{url}", "Entries": [{"Id": str(i), "MessageBody": "x" * 300_000} for i in range(4)]}, 400, "BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong"),
    ("SendMessage", {"QueueUrl": "{url}", "MessageBody": "\x08"}, 400, "InvalidMessageContents", "InvalidMessageContents"),
    ("SendMessage", {"QueueUrl": "{url}", "MessageBody": "x", "MessageAttributes": {"l": {"DataType": "String", "StringListValues": ["a"]}}}, 400, "UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation"),
    ("AddPermission", {"QueueUrl": "{url}", "Label": "many", "AWSAccountIds": ["111122223333"], "Actions": ["SendMessage", "ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility", "GetQueueAttributes", "GetQueueUrl", "ListQueueTags", "PurgeQueue"]}, 403, "OverLimit", "OverLimit"),
    ("ChangeMessageVisibility", {"QueueUrl": "{url}", "ReceiptHandle": "{handle}", "VisibilityTimeout": 5}, 400, "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight"),
    ("ListMessageMoveTasks", {"SourceArn": arn("missing")}, 404, "ResourceNotFoundException", "ResourceNotFoundException"),
    ("PurgeQueue", {"QueueUrl": "{url}"}, 403, "PurgeQueueInProgress", "AWS.SimpleQueueService.PurgeQueueInProgress"),
    ("CreateQueue", {"QueueName": "deleted"}, 400, "QueueDeletedRecently", "AWS.SimpleQueueService.QueueDeletedRecently"),
]


def fill(v, subst):
    if isinstance(v, str):
        return subst.get(v, v)
    if isinstance(v, list):
        return [fill(x, subst) for x in v]
    if isinstance(v, dict):
        return {k: fill(x, subst) for k, x in v.items()}
    return v


def test_every_error_code_with_its_status_type_and_header(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="q")["QueueUrl"]
    # A handle whose message is no longer in flight (visibility ran out).
    c.send_message(QueueUrl=url, MessageBody="m")
    handle = c.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"][0]["ReceiptHandle"]
    c.receive_message(QueueUrl=url, VisibilityTimeout=0)
    c.purge_queue(QueueUrl=url)
    gone = c.create_queue(QueueName="deleted")["QueueUrl"]
    c.delete_queue(QueueUrl=gone)
    subst = {"{url}": url, "{handle}": handle}
    seen = set()
    for action, params, status, type_, query_code in ERRORS:
        got_status, headers, body = json_post(ferry.sqs_endpoint + "/", action, fill(params, subst))
        where = f"{action} {str(params)[:80]}"
        assert got_status == status, (where, body)
        assert body["__type"].rsplit("#", 1)[1] == type_, (where, body)
        assert body["message"], where
        assert headers["x-amzn-query-error"] == f"{query_code};Sender", where
        assert headers["content-type"] == "application/x-amz-json-1.0"
        seen.add(type_)
    # The codes the issue lists, each answered at least once above.
    assert seen >= {
        "QueueDoesNotExist", "QueueNameExists", "InvalidParameterValue", "MissingParameter",
        "ReceiptHandleIsInvalid", "InvalidAttributeName", "TooManyEntriesInBatchRequest",
        "BatchEntryIdsNotDistinct", "EmptyBatchRequest", "InvalidBatchEntryId", "BatchRequestTooLong",
        "PurgeQueueInProgress", "QueueDeletedRecently", "OverLimit", "InvalidMessageContents",
        "UnsupportedOperation",
    }
    # And boto3 maps them to its modeled exceptions through the header.
    with pytest.raises(c.exceptions.OverLimit):
        c.add_permission(QueueUrl=url, Label="x", AWSAccountIds=["1"], Actions=["SendMessage"] * 8)
    with pytest.raises(c.exceptions.InvalidBatchEntryId):
        c.delete_message_batch(QueueUrl=url, Entries=[{"Id": "?", "ReceiptHandle": "h"}])


def test_malformed_requests_get_protocol_errors(ferry):
    ep = ferry.sqs_endpoint + "/"
    status, headers, _ = post(ep, b"{not json", {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.ListQueues"})
    assert status == 400
    status, headers, data = post(ep, b"{}", {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.Bogus"})
    assert status == 400 and b"UnknownOperation" in data
    status, _, body = json_post(ep, "SendMessage", {"QueueUrl": 5, "MessageBody": ["x"]})
    assert status == 400 and body["__type"]
    status, _, body = json_post(ep, "ReceiveMessage", {"QueueUrl": f"{ferry.sqs_endpoint}/{ACCOUNT}/q", "MaxNumberOfMessages": "ten"})
    assert status == 400
    # The server is still fine.
    assert json_post(ep, "ListQueues", {})[0] == 200


def signed(url: str, body: bytes, headers: dict) -> dict:
    """Headers of a SigV4-signed request (what every SDK sends)."""
    creds = botocore.credentials.Credentials("AKIDFERRYTEST", "secret", "session-token")
    req = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
    botocore.auth.SigV4Auth(creds, "sqs", REGION).add_auth(req)
    return dict(req.headers.items())


def test_sigv4_signed_requests_are_accepted(ferry):
    c = sqs_client(ferry)
    url = c.create_queue(QueueName="signed")["QueueUrl"]
    # JSON to the queue URL's path, signed with a session token.
    body = json.dumps({"QueueUrl": url, "MessageBody": "signed json"}).encode()
    headers = signed(url, body, {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.SendMessage"})
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDFERRYTEST/")
    assert "X-Amz-Security-Token" in headers
    status, _, data = post(url, body, headers)
    assert status == 200, data
    # Query protocol to `/`, signed.
    form = urllib.parse.urlencode(
        {"Action": "SendMessage", "Version": "2012-11-05", "QueueUrl": url, "MessageBody": "signed form"}
    ).encode()
    ep = ferry.sqs_endpoint + "/"
    headers = signed(ep, form, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    status, _, data = post(ep, form, headers)
    assert status == 200, data
    # A presigned-style query string (X-Amz-* parameters) is not a parameter
    # the action rejects.
    qs = urllib.parse.urlencode(
        {
            "Action": "GetQueueUrl",
            "QueueName": "signed",
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"AKIDFERRYTEST/20260101/{REGION}/sqs/aws4_request",
            "X-Amz-Date": "20260101T000000Z",
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": "0" * 64,
        }
    )
    with urllib.request.urlopen(f"{ep}?{qs}", timeout=10) as r:
        assert ET.fromstring(r.read()).find(f"{NS}GetQueueUrlResult/{NS}QueueUrl").text == url
    got = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert sorted(m["Body"] for m in got) == ["signed form", "signed json"]
