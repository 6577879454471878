"""The agent's ingest path: cleaning, storing, scoring and publishing micro-batches.

Kept apart from ``edge_agent.service`` (the process: lifecycle, MQTT wiring, commands,
status) because this is the hot path with its own invariants, which are easier to check
in one place: what the agent acknowledges must be committed or quarantined, and a message
is published only after its records are committed.

Cleaning, storing and ONNX scoring work on micro-batches: consecutive ingest payloads are
cleaned together (``edge_agent.pipeline.clean_payloads``: values checked as one array), then
scored, stored and published ``max_batch`` records at a time, each step one call for the
whole chunk, and all the chunks of one flush (up to ``FLUSH_BYTES`` of payloads) in one
transaction: a commit per chunk cost about 1 µs a record. A record stored before (a
redelivery) is found by the insert itself, which looks every id up anyway, and quarantined as
a duplicate with the bytes it came in; the chunk's prediction message leaves it out.
Every message is handled inside a try/except: an unexpected error quarantines that payload
with the reason and the agent keeps running; only ``StoreUnavailableError`` gets out, so
that the link acknowledges nothing of that read and the broker delivers it again.

A chunk's records, its outbox entry and its predictions commit together (savepoint per
chunk inside the flush's transaction), and the message is published after the commit.
Cleaning uses the serving model's FeatureSpec, or before any model the configured one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from edge_agent.config import AgentSettings
from edge_agent.drift import DriftMonitor
from edge_agent.inference import ModelSlot
from edge_agent.metrics import AgentMetrics
from edge_agent.pipeline import BatchResult, CleanBatch, CleanRecord, Quarantined, clean_payload, clean_payloads
from edge_agent.quarantine_log import QuarantineLog
from edge_agent.store import AgentStore, BatchScores, ScoredRecord, StoreUnavailableError
from edge_agent.telemetry import AgentCounters, LatencyWindow
from shared.errors import PayloadError
from shared.features import FeatureSpec
from shared.schemas import LabelBatch, decode, prediction_batch_bytes
from shared.tasks.catalog import base_feature_spec

log = logging.getLogger(__name__)

Message = tuple[str, bytes]
# Writes a prediction message's outbox entry (with the record ids it protects from
# eviction) and returns its publish step, to run after the commit (``Outbox.write``).
WritePredictions = Callable[[bytes, Sequence[str]], Callable[[], None]]

# Ingest payload bytes cleaned together at most: one readable event can bring a thousand
# messages, and cleaning them in one go was slower per record (the decoded values of 12,500
# records no longer stay in cache: 7-8 against 4-6 µs per record in bench_ingest's 3b/3c).
FLUSH_BYTES = 256 * 1024


def builtin_spec(task: str) -> FeatureSpec:
    """The task's base FeatureSpec, from the torch-free task catalog."""
    return base_feature_spec(task)


@dataclass(slots=True)
class _Pending:
    ingest: list[bytes] = field(default_factory=list)  # cleaned together at the flush
    ingest_bytes: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)


class _Prediction(NamedTuple):
    scores: BatchScores
    spec: FeatureSpec  # the scoring model's: the drift monitor compares with its statistics


class Ingest:
    """Handles the messages of one read on the agent's loop thread; other topics go to ``control``."""

    def __init__(
        self,
        settings: AgentSettings,
        store: AgentStore,
        slot: ModelSlot,
        *,
        fallback_spec: FeatureSpec | None,
        ingest_topic: str,
        labels_topic: str,
        write_predictions: WritePredictions,
        control: Callable[[str, bytes], None],
        counters: AgentCounters,
        metrics: AgentMetrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slot = slot
        self._fallback_spec = fallback_spec
        self.ingest_topic = ingest_topic
        self.labels_topic = labels_topic
        self._write_predictions = write_predictions
        self._control = control
        self.counters = counters
        self.metrics = metrics
        # What the status reports about the ingest path; written only here, on the loop thread.
        self.quarantine_log = QuarantineLog()
        self.latency = LatencyWindow(1000)
        self.drift = DriftMonitor()

    @property
    def spec(self) -> FeatureSpec:
        """Cleaning uses the serving model's spec; before any model, the configured one."""
        loaded = self.slot.current
        if loaded is not None:
            return loaded.manifest.feature_spec
        if self._fallback_spec is None:
            self._fallback_spec = builtin_spec(self.settings.task)
        return self._fallback_spec

    def handle_batch(self, batch: Sequence[Message]) -> None:
        """Handle messages in arrival order; ingest is cleaned, stored and scored in micro-batches."""
        pending = _Pending()
        for topic, payload in batch:
            try:
                if topic == self.ingest_topic:
                    pending.ingest.append(payload)
                    pending.ingest_bytes += len(payload)
                    if pending.ingest_bytes >= FLUSH_BYTES:
                        self._flush(pending)
                        pending = _Pending()
                elif topic == self.labels_topic:
                    self._handle_labels(payload, pending)
                else:
                    self._flush(pending)
                    pending = _Pending()
                    self._control(topic, payload)
            except StoreUnavailableError:
                raise  # nothing of this batch is acknowledged: the broker delivers it again
            except PayloadError as exc:  # a control message that does not decode (a command)
                log.warning("quarantined a message on %s: %s", topic, exc)
                pending.quarantined.append(Quarantined(None, f"{topic}: {exc}"[:500], payload))
            except Exception as exc:
                log.exception("failed to handle a message on %s", topic)
                pending.quarantined.append(Quarantined(None, f"internal error on {topic}: {exc!r}"[:500], payload))
        self._flush(pending)

    def _clean(self, payloads: list[bytes]) -> BatchResult:
        """Duplicates within ``payloads`` are quarantined here; those of stored records when
        the insert finds them (``_store_and_score``)."""
        spec = self.spec
        try:
            return clean_payloads(payloads, spec)
        except Exception:
            log.exception("batched cleaning failed; cleaning the %d payloads one by one", len(payloads))
        # One payload at a time, each in its own try: a bug costs only the payload that hits it.
        accepted: list[CleanRecord] = []
        quarantined: list[Quarantined] = []
        ids: set[str] = set()
        for payload in payloads:
            try:
                one = clean_payload(payload, spec, lambda rid: rid in ids or self.store.has_record(rid))
            except Exception as exc:
                quarantined.append(Quarantined(None, f"internal error while cleaning: {exc!r}"[:500], payload))
                continue
            accepted.extend(one.accepted)
            quarantined.extend(one.quarantined)
            ids.update(r.record_id for r in one.accepted)
        return BatchResult(CleanBatch.from_records(accepted, spec.width), quarantined)

    def _handle_labels(self, payload: bytes, pending: _Pending) -> None:
        try:
            batch = decode(LabelBatch, payload)
        except PayloadError as exc:
            pending.quarantined.append(Quarantined(None, f"labels: {exc}", payload))
            return
        self.counters.labelled += self.store.add_labels([(lb.record_id, lb.label) for lb in batch.labels])

    def _flush(self, pending: _Pending) -> None:
        """Quarantine and store what ``pending`` holds in one transaction (a chunk that fails is
        rolled back alone, to its savepoint), then publish the chunks' predictions."""
        if not pending.ingest and not pending.quarantined:
            return
        accepted: CleanBatch | None = None
        quarantined = pending.quarantined
        if pending.ingest:
            cleaned = self._clean(pending.ingest)
            accepted = cleaned.accepted
            quarantined = quarantined + cleaned.quarantined
        publishes: list[Callable[[], None]] = []
        try:
            with self.store.atomic():
                if accepted is not None:
                    size = self.settings.max_batch
                    for start, chunk in zip(range(0, len(accepted), size), accepted.chunks(size), strict=True):
                        try:
                            publish, stored_before = self._store_and_score(chunk)
                        except StoreUnavailableError:
                            raise
                        except Exception as exc:  # a bug, not the disk: keep the records in quarantine
                            log.exception("storing a chunk of %d records failed", len(chunk))
                            reason = f"internal error while storing: {exc!r}"[:500]
                            quarantined = quarantined + chunk.quarantined(self.spec.names, reason)
                            continue
                        publishes.append(publish)
                        if stored_before:
                            duplicates = [start + i for i in stored_before]
                            quarantined = quarantined + cleaned.stored_duplicates(duplicates, self.spec.names)
                if quarantined:
                    self.store.quarantine(quarantined)
        except StoreUnavailableError as exc:
            log.error("%s: %d ingest payloads left unacknowledged with the broker", exc, len(pending.ingest))
            raise
        except Exception as exc:
            log.exception("storing a batch failed (%d records)", 0 if accepted is None else len(accepted))
            self._quarantine_whole(pending, exc)
            return
        if quarantined:
            self.counters.quarantined += len(quarantined)
            self.quarantine_log.add(quarantined)
            for q in quarantined[:3]:
                log.info("quarantined %s: %s", q.record_id or "payload", q.reason)
        for publish in publishes:
            publish()

    def _quarantine_whole(self, pending: _Pending, exc: Exception) -> None:
        """A failure outside any chunk rolled the whole batch back, and the link acknowledges it
        all the same: keep every payload, raw and without its record id, with the reason."""
        reason = f"internal error while storing the batch: {exc!r}"[:500]
        items = [Quarantined(None, reason, payload) for payload in pending.ingest]
        items += [Quarantined(None, q.reason, q.raw) for q in pending.quarantined]
        try:
            self.store.quarantine(items)
        except StoreUnavailableError:
            raise
        except Exception:
            log.exception("quarantining the %d payloads of that batch failed as well: they are lost", len(items))
            return
        self.counters.quarantined += len(items)
        self.quarantine_log.add(items)

    def _store_and_score(self, chunk: CleanBatch) -> tuple[Callable[[], None], list[int]]:
        """Scored first, then the records stored with their predictions and the outbox entry,
        inside the caller's transaction: one write per record, and no crash can keep the records
        but lose the prediction message. Returns what publishes it, for after the commit, and
        the indexes of the records the store held already (left out of the message)."""
        with self.store.atomic():
            try:
                predicted = self._predict(chunk)
            except Exception:
                # The records are kept all the same, unscored: the backlog scores them later.
                log.exception("scoring a batch of %d records failed", len(chunk))
                predicted = None
            new = self.store.add_batch(chunk, None if predicted is None else predicted.scores)
            kept: list[int] = []
            stored_before: list[int] = []
            if len(new) != len(chunk):  # a redelivery: the store held some of these already
                fresh = set(new.record_ids)
                for i, rid in enumerate(chunk.record_ids):
                    (kept if rid in fresh else stored_before).append(i)
            send: Callable[[], None] | None = None
            if predicted is not None and len(new):
                scores = predicted.scores.take(kept) if stored_before else predicted.scores
                send = self._write_message(new.record_ids, scores)
                self.drift.observe(scores.model_version, predicted.spec, new.values)  # each record once
        counters = self.counters
        counted = len(new)

        def publish() -> None:
            counters.ingested += counted
            if send is not None:
                counters.scored += counted
                send()

        return publish, stored_before

    def _score(self, records: Sequence[CleanRecord]) -> int:
        """Score stored records (the backlog: their widths may differ from the model's)."""
        loaded = self.slot.current
        if loaded is None or not records:
            return 0
        width = loaded.scorer.width
        usable = [r for r in records if len(r.values) == width]
        if len(usable) != len(records):
            log.warning("%d stored records do not fit model width %d", len(records) - len(usable), width)
        if not usable:
            return 0
        batch = CleanBatch.from_records(usable, width)
        predicted = self._predict(batch)
        if predicted is None:
            return 0
        scores = predicted.scores
        # Outbox row first: outside a transaction, a crash before the predictions are stored
        # re-sends the batch and re-scores the records (duplicates are harmless); the other
        # order could lose the batch for good.
        send = self._write_message(batch.record_ids, scores)
        scored = [ScoredRecord(*row) for row in zip(batch.record_ids, scores.scores, scores.alerts, strict=True)]
        self.store.add_predictions(scores.model_version, scored)
        self.drift.observe(scores.model_version, predicted.spec, batch.values)
        self.counters.scored += len(batch)
        send()
        return len(batch)

    def _predict(self, batch: CleanBatch) -> _Prediction | None:
        """Score ``batch`` with the serving model; None when no model fits it."""
        loaded = self.slot.current  # one reference for the whole batch, even across a swap
        if loaded is None or len(batch) == 0:
            return None
        if batch.width != loaded.scorer.width:
            width = loaded.scorer.width
            log.warning("%d records of width %d do not fit model width %d", len(batch), batch.width, width)
            return None
        started = time.perf_counter()
        raw = loaded.scorer.score_raw(batch.values)
        elapsed = time.perf_counter() - started
        self.latency.add_batch(elapsed, len(batch))
        self.metrics.scoring_latency.observe(elapsed / len(batch))
        threshold = self.settings.alert_threshold
        values = raw.tolist()
        scores = BatchScores(loaded.version, values, [s >= threshold for s in values])
        return _Prediction(scores, loaded.manifest.feature_spec)

    def _write_message(self, record_ids: Sequence[str], scores: BatchScores) -> Callable[[], None]:
        """The prediction message's outbox entry; returns its publish step."""
        device = self.settings.device_id
        message = prediction_batch_bytes(device, scores.model_version, record_ids, scores.scores, scores.alerts)
        return self._write_predictions(message, record_ids)

    def score_backlog(self) -> None:
        """Score what was stored while no model (or a model of another width) was serving."""
        if self.slot.current is None:
            return
        total = 0
        try:
            while True:
                records = self.store.unscored_records(self.settings.max_batch)
                done = self._score(records)
                total += done
                if done == 0 or len(records) < self.settings.max_batch:
                    break
        except Exception:
            log.exception("scoring the backlog failed")
        if total:
            log.info("scored a backlog of %d stored records", total)
