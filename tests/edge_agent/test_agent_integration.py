"""A real Agent against a real Mosquitto: signed updates, tampered bundles, hostile input."""

from __future__ import annotations

import json
import random
import sqlite3
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentSettings
from edge_agent.store import SqliteAgentStore
from shared import topics
from shared.features import FeatureSpec
from shared.schemas import MAX_JSON_PAYLOAD_BYTES, LabelBatch, binary_ingest_bytes
from tests.edge_agent.agent_harness import AgentThread, Observer, wait_for
from tests.edge_agent.agent_testlib import GOOD, NAMES, payload, record
from tests.edge_agent.conftest import Bundle, Keys

pytestmark = pytest.mark.integration

DEVICE = "dev1"


@pytest.fixture
def fleet() -> str:
    return f"t{uuid.uuid4().hex[:10]}"  # fresh retained state per test on the shared broker


@pytest.fixture
def settings(mosquitto: Any, tmp_path: Path, fleet: str, operator_keys: Keys) -> AgentSettings:
    return AgentSettings(
        device_id=DEVICE,
        fleet=fleet,
        broker_url=mosquitto.url,
        data_dir=tmp_path / "agent",
        trusted_keys=[operator_keys.public_path],
        heartbeat_s=1.0,
        max_batch=64,
    )


@pytest.fixture
def observer(mosquitto: Any, fleet: str) -> Iterator[Observer]:
    obs = Observer(mosquitto.url, fleet, DEVICE)
    yield obs
    obs.close()


def status_with(obs: Observer, check: Callable[[Any], bool]) -> Any:
    return wait_for(lambda: (s := obs.latest_status()) is not None and check(s) and s, what="agent status")


def rejected_version(version: int) -> Callable[[Any], bool]:
    return lambda s: s.last_rejection is not None and s.last_rejection.version == version


def predicted(obs: Observer, record_id: str) -> Callable[[], bool]:
    return lambda: record_id in obs.predicted()


def install_v1(obs: Observer, make_bundle: Callable[..., Bundle]) -> Bundle:
    bundle = make_bundle(1)
    obs.publish_bundle(bundle.manifest_bytes, 1, bundle.chunks)
    status_with(obs, lambda s: s.model_version == 1)
    return bundle


def test_signed_bundle_is_installed_and_backlog_scored(
    settings: AgentSettings, observer: Observer, spec: FeatureSpec, make_bundle: Callable[..., Bundle]
) -> None:
    with AgentThread(settings, feature_spec=spec) as run:
        birth = status_with(observer, lambda s: s.kind == "birth")
        assert birth.model_version is None
        # records before any model: stored, then scored once the model arrives
        observer.ingest(payload([record(f"early{i}") for i in range(10)]))
        wait_for(lambda: run.agent is not None and run.agent.counters.ingested == 10, what="early records stored")
        observer.send(
            topics.labels(settings.fleet, DEVICE),
            LabelBatch.model_validate({"labels": [{"record_id": "early1", "label": 1}]}).to_bytes(),
        )
        install_v1(observer, make_bundle)
        wait_for(lambda: len(observer.predicted()) == 10, what="backlog predictions")
        assert {v for v, _ in observer.predicted().values()} == {1}
        status = status_with(observer, lambda s: s.counters.scored == 10 and s.counters.labelled == 1)
        assert status.signature_verified
        assert status.health == "ok"
        assert status.scoring_latency_ms_p50 is not None
        assert status.drift is not None
        assert status.drift.window == 10
        assert status.drift.worst_feature in spec.names
    offline = status_with(observer, lambda s: s.kind == "offline")
    assert offline.health == "offline"
    store = SqliteAgentStore(settings.db_path, readonly=True)
    assert [(h.version, h.event) for h in store.model_history()] == [(1, "installed")]
    assert store.labelled_dataset(spec.width)[0].shape == (1, spec.width)
    store.close()
    assert (settings.models_dir / "v1.onnx").is_file()


def test_restart_reloads_model_from_disk(
    settings: AgentSettings, observer: Observer, spec: FeatureSpec, make_bundle: Callable[..., Bundle]
) -> None:
    with AgentThread(settings, feature_spec=spec):
        install_v1(observer, make_bundle)
    with AgentThread(settings, feature_spec=spec):
        status_with(observer, lambda s: s.kind == "birth" and s.model_version == 1)
        observer.ingest(payload(record("after-restart")))
        wait_for(lambda: "after-restart" in observer.predicted(), what="prediction after restart")


def test_tampered_bundles_rejected_old_model_keeps_serving(
    settings: AgentSettings,
    observer: Observer,
    spec: FeatureSpec,
    make_bundle: Callable[..., Bundle],
    rogue_keys: Keys,
    onnx_bytes: bytes,
) -> None:
    flipped = make_bundle(2, seed=2)
    chunk = bytearray(flipped.chunks[2])
    chunk[100] ^= 0x01
    flipped.chunks[2] = bytes(chunk)
    unknown = make_bundle(3, key=rogue_keys.private)
    truncated = make_bundle(4)
    truncated.chunks[-1] = truncated.chunks[-1][: len(truncated.chunks[-1]) // 2]
    half_model = make_bundle(5, model_bytes=onnx_bytes[: len(onnx_bytes) // 2])  # signed, but not a model
    cases = [
        (flipped, "sha256 mismatch"),
        (unknown, "not a trusted operator key"),
        (truncated, "bytes, expected"),
        (half_model, "does not load"),
    ]
    with AgentThread(settings, feature_spec=spec):
        install_v1(observer, make_bundle)
        for n, (bundle, reason) in enumerate(cases, start=1):
            version = bundle.manifest.version
            observer.publish_bundle(bundle.manifest_bytes, version, bundle.chunks)
            status = status_with(observer, rejected_version(version))
            assert reason in status.last_rejection.reason
            assert status.model_version == 1
            assert status.counters.models_rejected == n
            observer.ingest(payload(record(f"after-v{version}")))
            wait_for(predicted(observer, f"after-v{version}"), what="prediction after rejection")
            assert observer.predicted()[f"after-v{version}"][0] == 1
    store = SqliteAgentStore(settings.db_path, readonly=True)
    history = store.model_history()
    store.close()
    rejected = {h.version: h.reason for h in history if h.event == "rejected"}
    assert set(rejected) == {2, 3, 4, 5}
    for bundle, reason in cases:
        assert reason in rejected[bundle.manifest.version]


def malformed_payloads(n: int, rng: random.Random) -> list[bytes]:
    """n payloads that each yield exactly one quarantine entry."""

    def with_feature(i: int, value: Any) -> bytes:
        obj = record(f"bad{i}")
        obj["features"]["b"] = value
        return payload(obj)

    makers: list[Callable[[int], bytes]] = [
        lambda i: b'{"schema_version": 1, "record_id": "x' + str(i).encode(),  # broken JSON
        lambda i: b"\xff\xfe\x00garbage",
        lambda i: with_feature(i, "12"),  # wrong type
        lambda i: with_feature(i, True),
        lambda i: with_feature(i, None),
        lambda i: payload(record(f"bad{i}")).replace(b"0.1", b"NaN"),
        lambda i: payload(record(f"bad{i}")).replace(b"0.1", b"Infinity"),
        lambda i: payload(record(f"bad{i}")).replace(b"0.1", b"1e999"),
        lambda i: payload({k: v for k, v in record(f"bad{i}").items() if k != "features"}),  # missing field
        lambda i: payload({**record(f"bad{i}"), "features": {"a": 1.0}}),  # missing features
        lambda i: payload(record(f"bad{i}", extra="x")),  # unknown field
        lambda i: with_feature(i, 1e6),  # out of range
        lambda i: payload({**record(f"bad{i}"), "schema_version": 9}),
        lambda i: payload({**record(f"bad{i}"), "record_id": 12}),
        lambda i: payload(42),
    ]
    out = [makers[i % len(makers)](i) for i in range(n - 3)]
    oversize = b"[" + b" " * (MAX_JSON_PAYLOAD_BYTES + 10) + b"]"
    out += [oversize] * 3
    rng.shuffle(out)
    return out


def test_hostile_input_is_quarantined_and_valid_records_scored(
    settings: AgentSettings, observer: Observer, spec: FeatureSpec, make_bundle: Callable[..., Bundle]
) -> None:
    rng = random.Random(7)
    bad = malformed_payloads(1000, rng)
    good_ids: list[str] = []
    messages: list[bytes] = []
    for i, bad_payload in enumerate(bad):
        messages.append(bad_payload)
        if i % 3 == 0:
            rid = f"ok{i}"
            good_ids.append(rid)
            values = (rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(0, 900))
            messages.append(payload(record(rid, values=values)))
        elif i % 50 == 1:  # an array mixing good and bad records
            ids = [f"mix{i}a", f"mix{i}b"]
            good_ids += ids
            messages.append(payload([record(ids[0]), record(ids[1])]))
    with AgentThread(settings, feature_spec=spec) as run:
        install_v1(observer, make_bundle)
        for message in messages:
            observer.ingest(message)
        wait_for(lambda: len(observer.predicted()) >= len(good_ids), what="all predictions")
        status = status_with(observer, lambda s: s.counters.quarantined == 1000)
        assert status.counters.scored == len(good_ids)
        # The status carries a bounded sample of the newest quarantined records, with reasons.
        assert 0 < len(status.recent_quarantine) <= 10
        assert all(q.reason for q in status.recent_quarantine)
        assert run.agent is not None
        assert run.agent.counters.ingested == len(good_ids)
    assert set(observer.predicted()) == set(good_ids)
    store = SqliteAgentStore(settings.db_path, readonly=True)
    counts = store.counts()
    reasons = [q.reason for q in store.recent_quarantine(2000)]
    store.close()
    assert counts["quarantined"] == 1000
    assert counts["records"] == counts["predictions"] == len(good_ids)
    assert all(reasons)
    for expected in (
        "broken JSON",
        "NaN",
        "Infinity",
        "not a finite number",
        "expected a number",
        "missing keys",
        "missing features",
        "unknown keys",
        "outside",
        "schema_version",
        "payload too large",
    ):
        assert any(expected in r for r in reasons), expected


def test_redelivered_record_is_quarantined_as_duplicate(
    settings: AgentSettings, observer: Observer, spec: FeatureSpec, make_bundle: Callable[..., Bundle]
) -> None:
    with AgentThread(settings, feature_spec=spec) as run:
        install_v1(observer, make_bundle)
        observer.ingest(payload(record("once")))
        observer.ingest(payload(record("once")))
        observer.ingest(json.dumps(record("marker")).encode())
        wait_for(lambda: "marker" in observer.predicted(), what="marker prediction")
        agent = run.agent
        assert agent is not None
        wait_for(lambda: agent.counters.quarantined == 1, what="duplicate quarantined")
    store = SqliteAgentStore(settings.db_path, readonly=True)
    assert "duplicate record_id 'once'" in store.recent_quarantine(1)[0].reason
    store.close()


def test_binary_frames_are_stored_and_scored_bad_records_quarantined(
    settings: AgentSettings, observer: Observer, spec: FeatureSpec, make_bundle: Callable[..., Bundle]
) -> None:
    rng = random.Random(11)
    fields = ("amount", "c", "a", "b")  # not the spec's order
    sent: dict[str, tuple[float, tuple[float, ...]]] = {}
    frames: list[bytes] = []
    for f in range(30):
        ids = [f"bin{f}-{i}" for i in range(10)]
        rows = [(rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(0, 900)) for _ in ids]
        ts = [f * 10.0 + i for i in range(10)]
        sent.update((rid, (t, row)) for rid, t, row in zip(ids, ts, rows, strict=True))
        frames.append(binary_ingest_bytes(fields, ids, ts, [(r[3], r[2], r[0], r[1]) for r in rows]))
    nan_row = (float("nan"), 0.0, 0.0, 1.0)
    mixed = binary_ingest_bytes(
        NAMES,
        ["good-a", "nan", "", "bin0-0", "good-b"],
        [1.0, 2.0, 3.0, 4.0, float("inf")],
        [GOOD, nan_row, GOOD, GOOD, GOOD],
    )
    truncated = frames[0][:-8]
    with AgentThread(settings, feature_spec=spec) as run:
        install_v1(observer, make_bundle)
        for body in frames:
            observer.ingest(body)
        observer.ingest(mixed)
        observer.ingest(truncated)
        observer.ingest(payload(record("json-after")))  # JSON beside frames on the same topic
        want = {*sent, "good-a", "json-after"}
        wait_for(lambda: set(observer.predicted()) >= want, what="predictions of the frames' records")
        agent = run.agent
        assert agent is not None
        wait_for(lambda: agent.counters.quarantined == 5, what="bad records and the truncated frame quarantined")
        assert agent.counters.ingested == agent.counters.scored == len(want)
    assert set(observer.predicted()) == want
    store = SqliteAgentStore(settings.db_path, readonly=True)
    quarantined = {(q.record_id, q.reason): q.raw for q in store.recent_quarantine(10)}
    store.close()
    short = "binary frame: 392 bytes after the header, expected 400 (10 timestamps and 10 x 4 values, float64)"
    nan = "feature 'a': expected a number, got null"
    assert set(quarantined) == {
        ("nan", nan),
        (None, "record_id: length 0 not within 1..128"),
        ("bin0-0", "duplicate record_id 'bin0-0'"),
        ("good-b", "ts: not a finite number (inf)"),
        (None, short),
    }
    # Kept: a bad record as the JSON record object it stands for, a broken frame as it came.
    assert json.loads(quarantined[("nan", nan)])["features"]["a"] is None
    assert quarantined[(None, short)] == truncated
    with sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True) as db:
        rows = db.execute('SELECT record_id, ts, "values", model_version FROM records').fetchall()
    stored = {rid: (ts, struct.unpack("<4d", blob), version) for rid, ts, blob, version in rows}
    assert {rid: stored[rid] for rid in sent} == {rid: (t, row, 1) for rid, (t, row) in sent.items()}


def test_a_command_that_does_not_decode_is_quarantined_with_its_reason(
    settings: AgentSettings, observer: Observer, spec: FeatureSpec, fleet: str
) -> None:
    from shared import topics

    garbage = b'{"command_id": "c1", "kind": "format-disk", "expires_at": 1}'
    with AgentThread(settings, feature_spec=spec) as run:
        agent = run.agent
        assert agent is not None
        observer.send(topics.commands(fleet, DEVICE), garbage)
        wait_for(lambda: agent.counters.quarantined == 1, what="the command quarantined")
        status = status_with(observer, lambda s: len(s.recent_quarantine) == 1)
        assert "invalid Command: kind" in status.recent_quarantine[0].reason
    store = SqliteAgentStore(settings.db_path, readonly=True)
    (entry,) = store.recent_quarantine(5)
    assert (entry.raw, entry.record_id) == (garbage, None)
    store.close()
