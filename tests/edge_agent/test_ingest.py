"""The ingest path on its own (no MQTT): records stored before are found by the insert.

A redelivered record is no longer looked up before the insert; the insert tells the agent it
had it, and it must come out as before: quarantined as a duplicate with the bytes it came in,
left out of the prediction message, counted once. Real stores (SQLite and in-memory) and a
real ONNX model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import AgentSettings
from edge_agent.inference import LoadedModel, ModelSlot, OnnxScorer
from edge_agent.ingest import Ingest
from edge_agent.metrics import AgentMetrics
from edge_agent.store import AgentStore, InMemoryAgentStore, SqliteAgentStore
from edge_agent.telemetry import AgentCounters
from shared.features import FeatureSpec
from shared.schemas import PredictionBatch, binary_ingest_bytes, decode
from tests.edge_agent.agent_testlib import GOOD, NAMES, payload, record
from tests.edge_agent.conftest import Bundle

INGEST = "in"


class Rig:
    """An ``Ingest`` over a real store and model; prediction messages land in ``messages``
    when published (after the commit)."""

    def __init__(self, store: AgentStore, slot: ModelSlot, spec: FeatureSpec, tmp_path: Path, max_batch: int) -> None:
        self.store = store
        self.messages: list[PredictionBatch] = []
        self.counters = AgentCounters()
        settings = AgentSettings(
            device_id="d1", fleet="f", broker_url="mqtt://127.0.0.1:1", data_dir=tmp_path / "a", max_batch=max_batch
        )
        self.ingest = Ingest(
            settings,
            store,
            slot,
            fallback_spec=spec,  # before any model
            ingest_topic=INGEST,
            labels_topic="labels",
            write_predictions=self._write,
            control=lambda topic, body: None,
            counters=self.counters,
            metrics=AgentMetrics(lambda: None),  # type: ignore[arg-type,return-value]
        )

    def _write(self, message: bytes, record_ids: Sequence[str]) -> Callable[[], None]:
        self.store.outbox_add("predictions", message, record_ids)
        return lambda: self.messages.append(decode(PredictionBatch, message))

    def read(self, *payloads: bytes) -> None:
        self.ingest.handle_batch([(INGEST, p) for p in payloads])

    def predicted(self) -> list[list[str]]:
        return [[p.record_id for p in m.predictions] for m in self.messages]

    def quarantined(self) -> list[tuple[str | None, str, bytes]]:
        return sorted((q.record_id, q.reason, q.raw) for q in self.store.recent_quarantine(100))


@pytest.fixture(params=["sqlite", "memory"])
def make_rig(
    request: pytest.FixtureRequest, tmp_path: Path, make_bundle: Callable[..., Bundle], spec: FeatureSpec
) -> Iterator[Callable[..., Rig]]:
    bundle = make_bundle(1)
    stores: list[AgentStore] = []

    def make(max_batch: int = 256, model: bool = True) -> Rig:
        store: AgentStore = (
            SqliteAgentStore(tmp_path / f"agent{len(stores)}.db") if request.param == "sqlite" else InMemoryAgentStore()
        )
        stores.append(store)
        loaded = LoadedModel(OnnxScorer(bundle.model_bytes, bundle.manifest), bundle.manifest)
        slot = ModelSlot(loaded if model else None)
        return Rig(store, slot, spec, tmp_path, max_batch)

    yield make
    for store in stores:
        if isinstance(store, SqliteAgentStore):
            store.close()


def test_a_redelivered_record_is_quarantined_with_its_bytes_and_left_out_of_the_message(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    # A single-record payload is kept byte for byte, spacing and number spelling included.
    once = (
        b'{"schema_version": 1, "record_id": "r2", "ts": 1.0, '
        b'"features": {"a": 0.10, "b": -0.2, "c": 0.3, "amount": 12.5}}'
    )
    rig.read(payload([record("r1")]), once)
    assert rig.predicted() == [["r1", "r2"]]
    rig.read(payload([record("r3")]), once)  # r2 again, in another read
    assert rig.predicted() == [["r1", "r2"], ["r3"]]
    assert rig.quarantined() == [("r2", "duplicate record_id 'r2'", once)]
    assert rig.store.counts()["records"] == 3
    assert (rig.counters.ingested, rig.counters.scored) == (3, 3)
    assert rig.store.outbox_count() == 2
    drift = rig.ingest.drift.drift()
    assert drift is not None
    assert drift.window == 3  # the drift monitor saw r2 once


def test_the_message_keeps_the_scores_of_the_new_records(make_rig: Callable[..., Rig], spec: FeatureSpec) -> None:
    rows = {f"r{i}": (0.5 * i - 3.0, 0.1 * i, -0.2 * i, 40.0 * i) for i in range(8)}
    rig = make_rig()
    rig.read(payload([record(rid, rows[rid]) for rid in ("r1", "r4", "r6")]))
    rig.read(payload([record(rid, rows[rid]) for rid in rows]))
    alone = make_rig()  # the same records without the earlier read: the scores each should get
    alone.read(payload([record(rid, rows[rid]) for rid in rows if rid not in ("r1", "r4", "r6")]))
    second, expected = rig.messages[1], alone.messages[0]
    assert [p.record_id for p in second.predictions] == ["r0", "r2", "r3", "r5", "r7"]
    assert [(p.record_id, p.score, p.alert) for p in second.predictions] == [
        (p.record_id, p.score, p.alert) for p in expected.predictions
    ]


def test_duplicates_straddling_chunks_are_each_told_apart(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch=2)
    rig.read(payload([record("r1"), record("r2"), record("r9")]))
    # chunks of two: [r1* r4] [r5 r2*] [r6 r9*] [r7]
    mixed = [record("r1", ts=5.0), record("r4"), record("r5"), record("r2", ts=6.0), record("r6")]
    rig.read(payload(mixed), payload(record("r9", ts=7.0)), payload([record("r7")]))
    assert rig.predicted()[-4:] == [["r4"], ["r5"], ["r6"], ["r7"]]
    quarantined = rig.quarantined()
    assert [(rid, reason) for rid, reason, _ in quarantined] == [
        ("r1", "duplicate record_id 'r1'"),
        ("r2", "duplicate record_id 'r2'"),
        ("r9", "duplicate record_id 'r9'"),
    ]
    # each entry holds its own record (these ts were not stored: the first copies were)
    assert [json.loads(raw)["ts"] for _, _, raw in quarantined] == [5.0, 6.0, 7.0]
    assert rig.counters.ingested == 7


def test_a_chunk_of_duplicates_only_sends_no_message(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch=2)
    rig.read(payload([record("r1"), record("r2")]))
    rig.read(payload([record("r1"), record("r2"), record("r3")]))
    assert rig.predicted() == [["r1", "r2"], ["r3"]]
    assert rig.store.outbox_count() == 2
    assert [rid for rid, _, _ in rig.quarantined()] == ["r1", "r2"]


def test_a_redelivered_frame_record_is_kept_as_the_record_it_stands_for(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    frame = binary_ingest_bytes(NAMES, ["f1", "f2"], [1.0, 2.0], [GOOD, (1.0, 2.0, 3.0, 4.0)])
    rig.read(frame)
    rig.read(binary_ingest_bytes(NAMES, ["f2", "f3"], [2.5, 3.0], [(1.0, 2.0, 3.0, 5.0), GOOD]))
    assert rig.predicted() == [["f1", "f2"], ["f3"]]
    [(rid, reason, raw)] = rig.quarantined()
    assert (rid, reason) == ("f2", "duplicate record_id 'f2'")
    kept = json.loads(raw)
    assert (kept["ts"], kept["features"]) == (2.5, {"a": 1.0, "b": 2.0, "c": 3.0, "amount": 5.0})


def test_without_a_model_duplicates_are_still_found(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(model=False)
    rig.read(payload([record("r1")]))
    rig.read(payload([record("r1"), record("r2")]))
    assert rig.messages == []
    assert [rid for rid, _, _ in rig.quarantined()] == ["r1"]
    assert rig.store.counts()["records"] == 2
    assert (rig.counters.ingested, rig.counters.scored) == (2, 0)
    stored = {r.record_id: r.values for r in rig.store.unscored_records(10)}
    assert stored == {"r1": GOOD, "r2": GOOD}
    assert np.array(stored["r2"]).dtype == np.float64


# A valid JSON escape naming a lone surrogate, which UTF-8 cannot encode; it replaces a
# placeholder id of the same length, so a binary frame's header keeps its length.
SURROGATE_ID = b'"\\ud800"'


@pytest.mark.parametrize("form", ["record", "array", "packed", "frame"])
def test_a_lone_surrogate_record_id_is_quarantined_alone(make_rig: Callable[..., Rig], form: str) -> None:
    rig = make_rig()
    good = payload([record("good-1"), record("good-2")])
    bad_ok = payload(record("SURROG"))
    if form == "array":
        bad_ok = payload([record("SURROG"), record("good-3")])
    elif form == "packed":
        bad_ok = payload({"schema_version": 1, "fields": list(NAMES), "rows": [["SURROG", 1.0, *GOOD]]})
    elif form == "frame":
        bad_ok = binary_ingest_bytes(NAMES, ["SURROG", "good-3"], [1.0, 2.0], [GOOD, GOOD])
    bad = bad_ok.replace(b'"SURROG"', SURROGATE_ID)
    # Out of range as well: the quarantined record would carry the id into the store.
    worse = payload(record("SURROG", (99.0, 0.0, 0.0, 1.0))).replace(b'"SURROG"', SURROGATE_ID)
    rig.read(good, bad, worse)
    stored = rig.store.counts()
    assert stored["records"] == (3 if form in ("array", "frame") else 2)
    quarantined = rig.quarantined()
    assert len(quarantined) == 2, quarantined
    assert all(rid is None for rid, _, _ in quarantined)
    assert any("not valid Unicode" in reason for _, reason, _ in quarantined), quarantined
    assert rig.counters.quarantined == 2


def test_a_batch_the_store_refuses_is_quarantined_whole_not_lost(
    tmp_path: Path, make_bundle: Callable[..., Bundle], spec: FeatureSpec
) -> None:
    # The failure is injected with a SQLite trigger: the real store, not the in-memory one.
    store = SqliteAgentStore(tmp_path / "refusing.db")
    bundle = make_bundle(1)
    slot = ModelSlot(LoadedModel(OnnxScorer(bundle.model_bytes, bundle.manifest), bundle.manifest))
    rig = Rig(store, slot, spec, tmp_path, 256)
    # A failure outside any chunk (here the quarantine insert of the batch): the whole
    # transaction rolls back, and the link acknowledges the read all the same.
    store._conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON quarantine WHEN NEW.record_id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'injected refusal'); END"
    )
    good = payload([record("good-1"), record("good-2")])
    poison = payload(record("poison", (99.0, 0.0, 0.0, 1.0)))
    rig.read(good, poison)
    assert store.counts()["records"] == 0  # rolled back with the batch
    quarantined = rig.quarantined()
    assert sorted(raw for _, _, raw in quarantined) == sorted([good, poison])
    assert all(rid is None and "injected refusal" in reason for rid, reason, _ in quarantined), quarantined
    assert rig.counters.quarantined == 2
    store.close()
