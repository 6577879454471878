"""Figure 2: cleaning throughput, batched, one core, against the same cleaning in plain pandas.

The input is what the agent receives: JSON ingest payloads (the replay's wire format, 10
fraud records per message) with nulls (NaN), out-of-range values and duplicate record ids,
grouped as the agent groups them (256 messages per micro-batch). fedforge's side is the
agent's own call, ``edge_agent.pipeline.clean_payloads``; the anchor decodes each payload
with ``json.loads``, builds one DataFrame per micro-batch and applies the same rules with
pandas operations. Both sides see the same "already stored" ids (a set both update), and
their outputs are checked identical (the script fails otherwise): same kept rows and values, same
quarantine decisions, reasons and raw bytes, in the same order. The process is pinned to
one CPU. The agent decodes plain JSON payloads with msgspec into types built from the spec
(orjson for the rest); the anchor's time with orjson instead of
``json.loads`` is reported too (extra ``pandas_orjson_records_per_s``), so the share of the
decoder in the ratio is visible.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from benchmarks.harness import Figure, interleaved, parse_args, write_result
from edge_agent.pipeline import Quarantined, clean_payloads
from shared.features import FeatureSpec
from shared.tasks.fraud_spec import base_feature_spec

RECORDS_PER_MESSAGE = 10  # simulations.replay's default batch
MESSAGES_PER_BATCH = 256  # messages cleaned in one clean_payloads call
FAULT_RATE = 0.02  # of records: each of null, out of range, duplicate id


def make_payloads(n: int, spec: FeatureSpec, seed: int = 0) -> list[bytes]:
    """``n`` fraud-shaped records as JSON arrays, with nulls, out-of-range values and duplicate ids."""
    rng = np.random.default_rng(seed)
    names = spec.names
    width = len(names)
    values = np.column_stack([rng.normal(0.0, 2.0, size=(n, width - 1)), rng.exponential(90.0, size=n)])
    ids = [f"dev-7-{i:08d}" for i in range(n)]
    faulty = rng.random(n)
    columns = rng.integers(0, width, size=n)
    objs_values: list[list[Any]] = values.tolist()
    for i in np.flatnonzero(faulty < FAULT_RATE).tolist():  # null (NaN on the sensor side)
        objs_values[i][columns[i]] = None
    for i in np.flatnonzero((faulty >= FAULT_RATE) & (faulty < 2 * FAULT_RATE)).tolist():  # out of range
        field = spec.fields[columns[i]]
        objs_values[i][columns[i]] = field.max + 1.0 + float(rng.random()) * 100 if i % 2 else field.min - 1.5
    for i in np.flatnonzero((faulty >= 2 * FAULT_RATE) & (faulty < 3 * FAULT_RATE)).tolist():  # re-sent record
        if i > 0:
            ids[i] = ids[max(0, i - int(rng.integers(1, 5000)))]
    records = [
        {"schema_version": 1, "record_id": rid, "ts": float(i), "features": dict(zip(names, row, strict=True))}
        for i, (rid, row) in enumerate(zip(ids, objs_values, strict=True))
    ]
    return [
        json.dumps(records[i : i + RECORDS_PER_MESSAGE], separators=(",", ":")).encode()
        for i in range(0, n, RECORDS_PER_MESSAGE)
    ]


@dataclass
class Output:
    """One side's result for a whole run, in a form both sides can produce."""

    ids: list[str]
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    quarantined: list[Quarantined]


def run_agent(batches: Sequence[list[bytes]], spec: FeatureSpec) -> Output:
    stored: set[str] = set()
    ids: list[str] = []
    ts: list[npt.NDArray[np.float64]] = []
    values: list[npt.NDArray[np.float64]] = []
    quarantined: list[Quarantined] = []
    for batch in batches:
        result = clean_payloads(batch, spec, lambda asked: {rid for rid in asked if rid in stored})
        accepted = result.accepted
        stored.update(accepted.record_ids)
        ids += accepted.record_ids
        ts.append(accepted.ts)
        values.append(accepted.values)
        quarantined += result.quarantined
    return Output(ids, np.concatenate(ts), np.concatenate(values), quarantined)


def pandas_clean_batch(
    payloads: list[bytes], spec: FeatureSpec, known: Callable[[list[str]], set[str]], loads: Callable[[bytes], Any]
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """The same rules, written the way a pandas user would: decode, flatten, one DataFrame, masks."""
    names = list(spec.names)
    records: list[dict[str, Any]] = []
    for payload in payloads:
        doc = loads(payload)
        if type(doc) is not list:
            raise SystemExit("the benchmark data holds JSON arrays only")
        records += doc
    rows = []
    for r in records:
        if set(r) != {"schema_version", "record_id", "ts", "features"} or set(r["features"]) != set(names):
            raise SystemExit("the benchmark data holds well-formed records only")
        rows.append(
            {"record_id": r["record_id"], "schema_version": r["schema_version"], "ts": r["ts"], **r["features"]}
        )
    df = pd.DataFrame(rows, columns=["record_id", "schema_version", "ts", *names])
    df["pos"] = np.arange(len(df))
    feats = df[names].astype("float64")  # JSON null -> NaN
    low = pd.Series({f.name: f.min for f in spec.fields})
    high = pd.Series({f.name: f.max for f in spec.fields})
    bad = feats.isna() | feats.lt(low, axis=1) | feats.gt(high, axis=1)
    bad_row = bad.any(axis=1) | (df["schema_version"] != 1) | ~np.isfinite(df["ts"].astype("float64"))
    first_bad = bad.idxmax(axis=1)

    reasons: dict[int, str] = {}
    for pos in np.flatnonzero(bad_row.to_numpy()).tolist():
        name = first_bad.iat[pos]
        value = feats.at[pos, name]
        field = spec.fields[names.index(name)]
        if pd.isna(value):
            reasons[pos] = f"feature {name!r}: expected a number, got null"
        else:
            reasons[pos] = f"feature {name!r}: {float(value)} outside [{field.min}, {field.max}]"
    valid = df[~bad_row]
    stored = known(valid["record_id"].tolist())
    dup = valid["record_id"].duplicated() | valid["record_id"].isin(stored)
    for pos, rid in zip(valid["pos"][dup].tolist(), valid["record_id"][dup].tolist(), strict=True):
        reasons[pos] = f"duplicate record_id {rid!r}"
    quarantined = [
        Quarantined(
            records[pos]["record_id"],
            reasons[pos],
            json.dumps(records[pos], separators=(",", ":")).encode("utf-8"),
        )
        for pos in sorted(reasons)
    ]
    return valid[~dup], quarantined


def run_pandas(batches: Sequence[list[bytes]], spec: FeatureSpec, loads: Callable[[bytes], Any]) -> Output:
    stored: set[str] = set()
    names = list(spec.names)
    frames = []
    quarantined: list[Quarantined] = []
    for batch in batches:
        kept, bad = pandas_clean_batch(batch, spec, lambda asked: {rid for rid in asked if rid in stored}, loads)
        stored.update(kept["record_id"].tolist())
        frames.append(kept)
        quarantined += bad
    df = pd.concat(frames, ignore_index=True)
    return Output(
        df["record_id"].tolist(),
        df["ts"].to_numpy(dtype=np.float64),
        df[names].to_numpy(dtype=np.float64),
        quarantined,
    )


def check_same(agent: Output, anchor: Output) -> None:
    if agent.ids != anchor.ids:
        raise SystemExit("agent and pandas keep different records")
    if agent.ts.tobytes() != anchor.ts.tobytes() or agent.values.tobytes() != anchor.values.tobytes():
        raise SystemExit("agent and pandas keep different values")
    if agent.quarantined != anchor.quarantined:
        raise SystemExit("agent and pandas quarantine differently")


def pin_one_cpu() -> str:
    """Run on one CPU, like a small edge device's cleaning thread; numpy/pandas stay single-threaded."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    except (AttributeError, OSError):
        return "not pinned"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    pinned = pin_one_cpu()
    spec = base_feature_spec()
    n = 4_000 if args.quick else 1_000_000
    payloads = make_payloads(n, spec)
    batches = [payloads[i : i + MESSAGES_PER_BATCH] for i in range(0, len(payloads), MESSAGES_PER_BATCH)]

    outputs: dict[str, Output] = {}

    def timed(name: str, fn: Callable[[], Output]) -> Callable[[], float]:
        def run() -> float:
            outputs.pop(name, None)  # free the previous repeat's output before timing
            start = time.perf_counter()
            out = fn()
            rate = n / (time.perf_counter() - start)
            outputs[name] = out  # checked after the timed runs: every side's last output
            return rate

        return run

    agent, anchor, anchor_orjson = interleaved(
        [
            timed("agent", lambda: run_agent(batches, spec)),
            timed("pandas", lambda: run_pandas(batches, spec, json.loads)),
            timed("pandas+orjson", lambda: run_pandas(batches, spec, orjson.loads)),
        ],
        repeats=2 if args.quick else 3,
        warmup=0,
        units=["records/s"] * 3,
    )
    check_same(outputs["agent"], outputs["pandas"])
    check_same(outputs["agent"], outputs["pandas+orjson"])
    kept, dropped = len(outputs["agent"].ids), len(outputs["agent"].quarantined)
    figure = Figure(
        figure="2 cleaning throughput, batched, 1 core",
        fedforge=agent,
        anchor=anchor,
        anchor_name="same cleaning in plain pandas (json.loads)",
        better="higher",
        goal=">= 1.5x pandas",
        goal_met=agent.median >= 1.5 * anchor.median,
        notes=(
            f"{n:,} fraud records, {RECORDS_PER_MESSAGE} per JSON message, {MESSAGES_PER_BATCH} messages per "
            f"micro-batch; {dropped:,} quarantined (null, out of range, duplicate), {kept:,} kept; outputs checked "
            f"identical; {pinned}. Decoding with orjson, pandas reaches {anchor_orjson.median:,.0f} records/s "
            f"({agent.median / anchor_orjson.median:.2f}x)."
        ),
        extra={
            "records": n,
            "quarantined": dropped,
            "records_per_message": RECORDS_PER_MESSAGE,
            "pandas_orjson_records_per_s": anchor_orjson.median,
            "ratio_vs_pandas_orjson": agent.median / anchor_orjson.median,
        },
    )
    write_result("bench_cleaning", [figure], quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
