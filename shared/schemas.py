"""Wire schemas (pydantic v2) of every JSON payload on the fedforge v1 topics.

Each payload carries ``schema_version``; decoders reject an unknown major version with a
clear reason instead of guessing. Ingest records are deliberately NOT a pydantic model:
their validation is the cleaning core's job (edge_agent.pipeline), which must quarantine
each bad record with a reason and keep the good ones of the same message.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Sequence
from struct import Struct
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import PayloadError
from shared.features import FeatureSpec

SCHEMA_VERSION: Literal[1] = 1
# Upper bound for any single JSON payload an agent accepts; larger ones are quarantined.
MAX_JSON_PAYLOAD_BYTES = 1_048_576


def _exact_int(value: Any, name: str) -> Any:
    """JSON ``true`` or ``1.0`` is not the integer 1 (ingest's cleaning refuses the same laxness)."""
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")
    return value


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION

    _exact_version = field_validator("schema_version", mode="before")(lambda v: _exact_int(v, "schema_version"))

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
    except ValueError as exc:  # Python refuses integers of more than 4,300 digits
        raise PayloadError(f"broken JSON: an unreadable number ({str(exc)[:60]})") from None


def short_repr(value: Any, limit: int = 40) -> str:
    """A bounded repr for a reason: a decoded value may be nested a thousand levels deep."""
    return reprlib.repr(value)[:limit]


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

    _exact_label = field_validator("label", mode="before")(lambda v: _exact_int(v, "label"))


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

# The server stores a status in SQL columns (server.registry.models) and streams it to browsers
# as JSON. A value either cannot hold (a 64-bit version in a 32-bit column, NaN in JSON, a NUL
# in PostgreSQL text) would fail the write after the status was accepted, so the bounds are
# part of the schema: such a status is refused as malformed, with a reason, before any write.
INT32_MAX = 2**31 - 1
# Cumulative counters may legitimately pass 2**31 on a long-lived agent; 64 bits is what
# SQLite, JSON columns and a BIGINT hold.
INT64_MAX = 2**63 - 1


def _nul_free(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; a quarantined record may well contain one, and the
    sample must still reach the dashboard, so NUL becomes U+FFFD (same length, still visible)."""
    return None if text is None else text.replace("\x00", "\ufffd")


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Int32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]


class Counters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ingested: Count = 0
    quarantined: Count = 0
    scored: Count = 0
    labelled: Count = 0
    trained: Count = 0
    models_rejected: Count = 0


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Int32 | None
    reason: str
    at: FiniteFloat

    _nul_free = field_validator("reason")(_nul_free)


class QuarantineSample(BaseModel):
    """One recently quarantined record: why, and the start of what arrived (bounded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: FiniteFloat
    record_id: str | None = Field(default=None, max_length=128)
    reason: str = Field(max_length=500)
    excerpt: str = Field(default="", max_length=200)

    _nul_free = field_validator("record_id", "reason", "excerpt")(_nul_free)


class Drift(BaseModel):
    """Input drift against the serving model's training statistics (edge_agent.drift).

    ``score`` is the mean absolute standardized mean shift over the features in the last
    ``window`` records; ``worst_feature`` / ``worst_shift`` name the feature that moved most.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: FiniteFloat = Field(ge=0)
    window: Count
    # 128: the telemetry column that keeps it.
    worst_feature: str | None = Field(default=None, max_length=128)
    worst_shift: FiniteFloat = 0.0

    _nul_free = field_validator("worst_feature")(_nul_free)


class DeviceStatus(WireModel):
    device_id: str
    fleet: str
    kind: Literal["birth", "heartbeat", "offline"]
    ts: float
    seq: int = 0
    model_version: Int32 | None = None
    # The version an operator's pin holds this device at (None: it follows the fleet's release).
    pinned_version: Int32 | None = None
    signature_verified: bool = False
    health: Literal["ok", "degraded", "offline"] = "ok"
    counters: Counters = Counters()
    queue_depth: Int32 = 0
    # Messages in the agent's on-disk outbox not yet acknowledged by the broker.
    outbox_depth: Int32 = 0
    scoring_latency_ms_p50: FiniteFloat | None = None
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


# Ranges one ChunkRequest may name; a download missing more asks for the first ones, and
# for the rest once those have come.
MAX_MISSING_RANGES = 10_000


class ChunkRequest(WireModel):
    """An agent asking for chunks it is missing (resume after a drop)."""

    device_id: str
    task: str
    version: int
    missing: tuple[tuple[int, int], ...] = Field(max_length=MAX_MISSING_RANGES)


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
    expires_at: float = Field(allow_inf_nan=False)  # NaN would pass every expiry check
    # The one device a ``pin`` or ``unpin`` is for (signed: it cannot be replayed to another).
    device_id: str | None = Field(default=None, min_length=1, max_length=128)
    version: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    fleet: str | None = None
    task: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    issued_at: float = Field(default=0.0, allow_inf_nan=False)
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
