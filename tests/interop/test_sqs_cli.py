"""The AWS CLI (`aws sqs ... --endpoint-url`, pinned in requirements.txt)
against Ferry: a create/send/receive/delete round trip with the CLI's own
MD5 checks, and an error as the CLI reports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqs_util import ACCOUNT, REGION

AWS = Path(sys.executable).parent / "aws"


def aws(ferry, tmp_path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "ferry",
        "AWS_SECRET_ACCESS_KEY": "ferry-secret",
        "AWS_DEFAULT_REGION": REGION,
        # No configuration of the machine's user leaks in.
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_PAGER": "",
    }
    p = subprocess.run(
        [str(AWS), "sqs", *args, "--endpoint-url", ferry.sqs_endpoint, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert p.returncode == 0, f"aws sqs {' '.join(args)}: {p.returncode}\n{p.stderr}"
    return p


def test_aws_cli_round_trip(ferry, tmp_path):
    assert AWS.exists(), f"the AWS CLI is not installed at {AWS} (pip install -r tests/interop/requirements.txt)"
    created = json.loads(aws(ferry, tmp_path, "create-queue", "--queue-name", "cli-orders").stdout)
    url = created["QueueUrl"]
    assert url == f"{ferry.sqs_endpoint}/{ACCOUNT}/cli-orders"
    sent = json.loads(
        aws(
            ferry,
            tmp_path,
            "send-message",
            "--queue-url",
            url,
            "--message-body",
            '{"order": 42}',
            "--message-attributes",
            json.dumps({"kind": {"DataType": "String", "StringValue": "OrderCreated"}}),
        ).stdout
    )
    assert sent["MessageId"] and sent["MD5OfMessageAttributes"]
    got = json.loads(
        aws(
            ferry,
            tmp_path,
            "receive-message",
            "--queue-url",
            url,
            "--attribute-names",
            "All",
            "--message-attribute-names",
            "All",
            "--wait-time-seconds",
            "1",
        ).stdout
    )
    [m] = got["Messages"]
    assert (m["MessageId"], m["Body"]) == (sent["MessageId"], '{"order": 42}')
    assert m["MessageAttributes"]["kind"]["StringValue"] == "OrderCreated"
    assert m["Attributes"]["ApproximateReceiveCount"] == "1"
    aws(ferry, tmp_path, "delete-message", "--queue-url", url, "--receipt-handle", m["ReceiptHandle"])
    # Nothing left: the CLI prints nothing for an empty receive.
    assert aws(ferry, tmp_path, "receive-message", "--queue-url", url).stdout.strip() == ""
    attrs = json.loads(
        aws(ferry, tmp_path, "get-queue-attributes", "--queue-url", url, "--attribute-names", "All").stdout
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    listed = json.loads(aws(ferry, tmp_path, "list-queues").stdout)
    assert listed["QueueUrls"] == [url]


def test_aws_cli_reports_sqs_errors(ferry, tmp_path):
    p = aws(ferry, tmp_path, "get-queue-url", "--queue-name", "missing", check=False)
    assert p.returncode != 0
    assert "AWS.SimpleQueueService.NonExistentQueue" in p.stderr
    assert "The specified queue does not exist" in p.stderr
