"""Helpers for the SQS interop tests: boto3 clients against a `ferry` fixture."""

from __future__ import annotations

import boto3
import botocore.config

REGION = "us-east-1"
ACCOUNT = "000000000000"


def sqs_client(ferry, **config):
    """A boto3 SQS client (JSON protocol, MD5 validation on) for the server."""
    return boto3.client(
        "sqs",
        endpoint_url=ferry.sqs_endpoint,
        region_name=REGION,
        aws_access_key_id="ferry",
        aws_secret_access_key="ferry-secret",
        config=botocore.config.Config(retries={"max_attempts": 1}, **config),
    )


def error_code(excinfo) -> str:
    """The error code botocore parsed (from x-amzn-query-error)."""
    return excinfo.value.response["Error"]["Code"]


def arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def receive_all(client, url, expected: int, timeout_s: float = 10.0, **kwargs) -> list[dict]:
    """Receives until `expected` messages came or the time is up."""
    import time

    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        r = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, **kwargs)
        got.extend(r.get("Messages", []))
    return got
