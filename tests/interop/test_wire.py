"""Raw wire checks that need no client library."""

from __future__ import annotations

from conftest import api_versions_v0

# Kafka 3.7's maxima for the implemented APIs (what clients infer the release
# from), minima where kafka-protocol / Kafka 4.0 start.
EXPECTED_APIS = {
    0: (3, 10),  # Produce
    1: (4, 16),  # Fetch
    2: (1, 8),  # ListOffsets
    3: (0, 12),  # Metadata
    18: (0, 3),  # ApiVersions
    19: (2, 7),  # CreateTopics
    20: (1, 6),  # DeleteTopics
    32: (1, 4),  # DescribeConfigs
    33: (0, 2),  # AlterConfigs
    37: (0, 3),  # CreatePartitions
    44: (0, 1),  # IncrementalAlterConfigs
    60: (0, 1),  # DescribeCluster
    10: (0, 4),  # FindCoordinator
    11: (0, 9),  # JoinGroup
    14: (0, 5),  # SyncGroup
    12: (0, 4),  # Heartbeat
    13: (0, 5),  # LeaveGroup
    8: (2, 9),  # OffsetCommit
    9: (1, 9),  # OffsetFetch
    16: (0, 4),  # ListGroups
    15: (0, 5),  # DescribeGroups
    42: (0, 2),  # DeleteGroups
    47: (0, 0),  # OffsetDelete
    22: (0, 4),  # InitProducerId
}


def test_api_versions_advertises_kafka_3_7_ranges(ferry):
    apis = api_versions_v0(ferry.host, ferry.port, timeout=5)
    keys = [k for k, _, _ in apis]
    assert len(keys) == len(set(keys)), f"duplicate API keys: {apis}"
    assert {k: (lo, hi) for k, lo, hi in apis} == EXPECTED_APIS


def test_one_request_gets_its_response_without_a_second_request(ferry):
    """A client sends ApiVersions first and waits for the answer before
    sending anything else; the broker must not hold the response back."""
    for _ in range(3):
        assert api_versions_v0(ferry.host, ferry.port, timeout=5)
