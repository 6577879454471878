"""Wire values that decode but mean something else are refused with a reason, not coerced."""

from __future__ import annotations

import pytest

from shared.errors import PayloadError, SignatureError
from shared.schemas import MAX_MISSING_RANGES, ChunkRequest, Command, LabelBatch, decode, loads_json, short_repr
from shared.signing import TrustStore, generate_private_key, key_id, sign


@pytest.mark.parametrize(
    "payload",
    [
        b'{"schema_version": 1, "labels": [{"record_id": "r1", "label": true}]}',
        b'{"schema_version": 1, "labels": [{"record_id": "r1", "label": 0.0}]}',
        b'{"schema_version": true, "labels": [{"record_id": "r1", "label": 1}]}',
        b'{"schema_version": 1.0, "labels": [{"record_id": "r1", "label": 1}]}',
    ],
)
def test_labels_and_versions_must_be_integers(payload: bytes) -> None:
    with pytest.raises(PayloadError, match="must be an integer"):
        decode(LabelBatch, payload)


def test_integer_labels_still_decode() -> None:
    batch = decode(LabelBatch, b'{"schema_version": 1, "labels": [{"record_id": "r1", "label": 1}]}')
    assert batch.labels[0].label == 1


def test_an_integer_python_cannot_read_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="unreadable number"):
        loads_json(b'{"ts": 1' + b"0" * 5000 + b"}")


def test_a_reason_quotes_a_deeply_nested_value_briefly() -> None:
    deep: list[object] = []
    for _ in range(5000):  # deeper than repr() can go
        deep = [deep]
    with pytest.raises(RecursionError):
        repr(deep)
    assert len(short_repr(deep)) <= 40


def test_a_command_cannot_expire_at_nan() -> None:
    with pytest.raises(PayloadError, match="expires_at"):
        decode(Command, b'{"command_id": "c", "kind": "rollback", "expires_at": NaN}')


def test_signed_fields_that_are_not_json_fail_as_a_signature_error() -> None:
    key = generate_private_key()
    trust = TrustStore([key.public_key()])
    signature = sign(key, {"a": 1})
    for payload in ({"a": float("nan")}, {"a": float("inf")}, {"a": "\ud800"}):
        with pytest.raises(SignatureError, match="not canonical JSON"):
            trust.verify(key_id(key.public_key()), signature, payload)


def test_a_chunk_request_names_at_most_max_missing_ranges() -> None:
    ranges = tuple((i * 2, i * 2) for i in range(MAX_MISSING_RANGES + 1))
    with pytest.raises(ValueError, match="missing"):
        ChunkRequest(device_id="d", task="t", version=1, missing=ranges)
    ChunkRequest(device_id="d", task="t", version=1, missing=ranges[:MAX_MISSING_RANGES])
