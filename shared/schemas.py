"""Wire schemas (pydantic v2) of every JSON payload on the fedforge v1 topics.

Each payload carries ``schema_version``; decoders reject an unknown major version with a
clear reason instead of guessing. Ingest records are deliberately NOT a pydantic model:
their validation is the cleaning core's job (edge_agent.pipeline), which must quarantine
each bad record with a reason and keep the good ones of the same message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from struct import Struct
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import PayloadError
from shared.features import FeatureSpec

SCHEMA_VERSION: Literal[1] = 1
# Upper bound for any single JSON payload an agent accepts; larger ones are quarantined.
MAX_JSON_PAYLOAD_BYTES = 1_048_576


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


M = TypeVar("M", bound=WireModel)


def decode(model: type[M], payload: bytes) -> M:
    """Decode and validate one payload; every failure is a ``PayloadError`` with a reason."""
    if len(payload) > MAX_JSON_PAYLOAD_BYTES:
        raise PayloadError(f"payload too large: {len(payload)} bytes > {MAX_JSON_PAYLOAD_BYTES}")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise PayloadError(f"invalid {model.__name__}: {where}: {first.get('msg', 'invalid')}") from None


def loads_json(payload: bytes) -> Any:
    """Strict JSON decode: NaN/Infinity literals are rejected, not silently accepted."""

    def _reject_constant(name: str) -> Any:
        raise PayloadError(f"non-standard JSON constant {name}")

    if len(payload) > MAX_JSON_PAYLOAD_BYTES:
        raise PayloadError(f"payload too large: {len(payload)} bytes > {MAX_JSON_PAYLOAD_BYTES}")
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except PayloadError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"broken JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("broken JSON: nested too deeply") from None


# ---- ingest (devices -> agent) -----------------------------------------------------------

# The forms an ingest message may take (the replay's choice): a JSON record object or array
# of them, the packed JSON form, the binary frame.
IngestWireFormat = Literal["records", "packed", "binary"]
INGEST_WIRE_FORMATS: tuple[IngestWireFormat, ...] = ("records", "packed", "binary")


def ingest_record_object(record_id: str, ts: float | None, features: dict[str, float | None]) -> dict[str, Any]:
    """One ingest record in its JSON record-object form (what quarantine keeps of a record that
    came in another form: a packed row, a binary frame's record, a chunk the store refused)."""
    return {"schema_version": SCHEMA_VERSION, "record_id": record_id, "ts": ts, "features": features}


# The packed ingest form: the field names once, then one array per record,
# ``[record_id, ts, value of fields[0], value of fields[1], ...]`` (docs/architecture.md,
# "Wire contracts"). The agent reads it straight into its value array; per-record objects
# repeat every field name in every record.
PACKED_INGEST_KEYS = frozenset({"schema_version", "fields", "rows"})


def packed_ingest_bytes(
    fields: Sequence[str], record_ids: Sequence[str], ts: Sequence[float], rows: Sequence[Sequence[float]]
) -> bytes:
    """Records as one packed ingest payload (``rows[i]`` holds the values of ``fields`` in order);
    a NaN or None (missing value) is written as null, and so would an infinity be (orjson's rule):
    refuse infinities before."""
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "fields": list(fields),
            "rows": [[rid, t, *values] for rid, t, values in zip(record_ids, ts, rows, strict=True)],
        }
    )


# The binary ingest frame: no JSON number to parse on either side (docs/architecture.md,
# "Wire contracts"). ``magic | uint32 LE header length | UTF-8 JSON header | n float64 LE
# timestamps | n x len(fields) float64 LE values, row-major``; the header is
# ``{"schema_version", "fields", "record_ids"}`` and n is ``len(record_ids)``. No JSON text can
# start with "F" (not even after a UTF-8 BOM), so the magic tells the frame from JSON at once.
# NaN stands for a missing value (JSON null in the other forms).
BINARY_INGEST_MAGIC = b"FFB1"
BINARY_INGEST_KEYS = frozenset({"schema_version", "fields", "record_ids"})
BINARY_INGEST_PREFIX = Struct("<4sI")  # magic, header length in bytes


def binary_ingest_bytes(
    fields: Sequence[str],
    record_ids: Sequence[str],
    ts: Sequence[float] | npt.ArrayLike,
    rows: Sequence[Sequence[float]] | npt.ArrayLike,
) -> bytes:
    """Records as one binary ingest frame (``rows[i]`` holds the values of ``fields`` in order).

    The header is padded with spaces (JSON whitespace) so the numbers start at a multiple of
    8 bytes: a decoder may then view them in place; it must not rely on it."""
    n, width = len(record_ids), len(fields)
    times = np.asarray(ts, dtype="<f8").reshape(-1)
    values = np.asarray(rows, dtype="<f8").reshape(-1)
    if times.size != n or values.size != n * width:
        raise ValueError(
            f"{n} record ids need {n} timestamps and {n * width} values, got {times.size} and {values.size}"
        )
    header = orjson.dumps({"schema_version": SCHEMA_VERSION, "fields": list(fields), "record_ids": list(record_ids)})
    header += b" " * (-(BINARY_INGEST_PREFIX.size + len(header)) % 8)
    return b"".join(
        (BINARY_INGEST_PREFIX.pack(BINARY_INGEST_MAGIC, len(header)), header, times.tobytes(), values.tobytes())
    )


# ---- labels (labeller -> agent) -------------------------------------------------------


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    record_id: str = Field(min_length=1, max_length=128)
    label: Literal[0, 1]


class LabelBatch(WireModel):
    labels: tuple[Label, ...] = Field(max_length=100_000)


# ---- predictions (agent -> consumers) -------------------------------------------------


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    record_id: str
    score: float
    alert: bool


class PredictionBatch(WireModel):
    device_id: str
    model_version: int
    predictions: tuple[Prediction, ...]


def prediction_batch_bytes(
    device_id: str, model_version: int, record_ids: Sequence[str], scores: Sequence[float], alerts: Sequence[bool]
) -> bytes:
    """A ``PredictionBatch`` payload straight from columns: the agent publishes one per scored
    micro-batch, and a pydantic object per prediction cost more than storing it. Decodes to
    the same ``PredictionBatch`` as building the model would."""
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "device_id": device_id,
            "model_version": model_version,
            "predictions": [
                {"record_id": rid, "score": score, "alert": alert}
                for rid, score, alert in zip(record_ids, scores, alerts, strict=True)
            ],
        }
    )


# ---- status (agent -> cloud, retained) ------------------------------------------------


class Counters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ingested: int = 0
    quarantined: int = 0
    scored: int = 0
    labelled: int = 0
    trained: int = 0
    models_rejected: int = 0


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | None
    reason: str
    at: float


class QuarantineSample(BaseModel):
    """One recently quarantined record: why, and the start of what arrived (bounded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float
    record_id: str | None = Field(default=None, max_length=128)
    reason: str = Field(max_length=500)
    excerpt: str = Field(default="", max_length=200)


class Drift(BaseModel):
    """Input drift against the serving model's training statistics (edge_agent.drift).

    ``score`` is the mean absolute standardized mean shift over the features in the last
    ``window`` records; ``worst_feature`` / ``worst_shift`` name the feature that moved most.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float = Field(ge=0)
    window: int = Field(ge=0)
    worst_feature: str | None = None
    worst_shift: float = 0.0


class DeviceStatus(WireModel):
    device_id: str
    fleet: str
    kind: Literal["birth", "heartbeat", "offline"]
    ts: float
    seq: int = 0
    model_version: int | None = None
    # The version an operator's pin holds this device at (None: it follows the fleet's release).
    pinned_version: int | None = None
    signature_verified: bool = False
    health: Literal["ok", "degraded", "offline"] = "ok"
    counters: Counters = Counters()
    queue_depth: int = 0
    # Messages in the agent's on-disk outbox not yet acknowledged by the broker.
    outbox_depth: int = 0
    scoring_latency_ms_p50: float | None = None
    last_rejection: Rejection | None = None
    # Optional (older agents omit them): input drift and the newest quarantined records.
    drift: Drift | None = None
    recent_quarantine: tuple[QuarantineSample, ...] = Field(default=(), max_length=20)

    @field_validator("ts")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("ts must be finite")
        return v


# ---- model distribution (cloud -> agents) ---------------------------------------------


class ModelManifest(WireModel):
    """Everything about a release; the signature covers the canonical JSON of the rest."""

    task: str
    version: int = Field(ge=1)
    parent_version: int | None = None
    created: float
    training_run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    feature_spec: FeatureSpec
    input_name: str
    output_name: str
    size: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    chunk_size: int = Field(ge=1024)
    chunk_count: int = Field(ge=1)
    url: str | None = None
    signer: str = ""
    signature: str = ""


class ChunkRequest(WireModel):
    """An agent asking for chunks it is missing (resume after a drop)."""

    device_id: str
    task: str
    version: int
    missing: tuple[tuple[int, int], ...] = Field(max_length=10_000)


class Command(WireModel):
    """A cloud -> agent instruction, signed with the operator key (shared.commands).

    ``rollback`` (fleet-wide) means "serve exactly ``version`` (``sha256``) even if it is
    older than what you serve": the one way past an agent's anti-downgrade rule, so only an
    operator key may sign it. ``pin`` (one device, ``device_id``) means the same and "ignore
    every other release until unpinned"; ``unpin`` lets the device follow the fleet again
    and carries the fleet's release, which it then serves. The manifest (signed on its own
    at release time) lets an agent that no longer holds the version fetch and verify it.
    """

    command_id: str = Field(min_length=1, max_length=128)
    kind: Literal["rollback", "pin", "unpin", "config"]
    expires_at: float
    # The one device a ``pin`` or ``unpin`` is for (signed: it cannot be replayed to another).
    device_id: str | None = Field(default=None, min_length=1, max_length=128)
    version: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    fleet: str | None = None
    task: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    issued_at: float = 0.0
    issued_by: str = ""
    manifest: ModelManifest | None = None
    signer: str = ""
    signature: str = ""


class FederationCall(WireModel):
    """The cloud calling the fleet to a training run (``open``) or letting it go (``ended``).

    Retained on the fleet's federation topic, so an agent that comes online during the run
    joins it. Agents in ``federation_mode = "on_demand"`` run their SuperNode only while an
    open, unexpired call stands. Signed with the operator key (shared.commands), like a
    rollback: a forged ``ended`` could pull agents out of a run.
    """

    run_id: str = Field(min_length=1, max_length=128)
    fleet: str = Field(min_length=1, max_length=64)
    state: Literal["open", "ended"]
    issued_at: float
    # An open call whose run never said it ended (its ServerApp died) stops counting here.
    expires_at: float
    signer: str = ""
    signature: str = ""


class CommandAck(WireModel):
    """An agent's answer to a command: accepted (now serving ``serving_version``) or rejected, and why."""

    command_id: str = Field(min_length=1, max_length=128)
    device_id: str
    kind: str
    version: int | None = None
    accepted: bool
    reason: str = Field(default="", max_length=1000)
    serving_version: int | None = None
    ts: float
