"""Figure 1: scoring inside the agent against a bare ``InferenceSession.run``, batch 1 and 256.

fedforge's side is the agent's own per-batch call, ``ModelSlot.current.scorer.score_raw``:
raw validated values (float64, as cleaning stores them) in, scores out, normalization with
the manifest's FeatureSpec included. The anchor is ONNX Runtime called directly on the
same model with the same records already normalized (float32), one thread, which is the
least anyone could do per batch. Both sides run on an ONNX export of the fraud MLP made by
the cloud's release code (``server.release.export``), with fitted normalization statistics.
Each repeat times a loop of calls and reports microseconds per call; the sides alternate.
The time is the calling thread's CPU time (``time.thread_time``: with one ONNX Runtime
thread all the work runs there), because on a shared machine wall time at the microsecond
scale mostly measures who else was scheduled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.fraud_model import signed_fraud_model
from benchmarks.harness import Figure, interleaved, parse_args, write_result
from edge_agent.inference import LoadedModel, ModelSlot, OnnxScorer
from shared.features import FeatureSpec
from shared.tasks.fraud import INPUT_NAME, OUTPUT_NAME

GOAL = "agent's path <= 2x the bare call"


def synthetic_raw(n: int, seed: int) -> npt.NDArray[np.float64]:
    """Records shaped like the fraud set: 28 PCA components around 0, an amount >= 0."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(0.0, 1.5, size=(n, 28)), rng.exponential(90.0, size=n)])


def build_slot() -> tuple[ModelSlot, bytes, FeatureSpec]:
    model_bytes, manifest, spec = signed_fraud_model(synthetic_raw(10_000, seed=1), Ed25519PrivateKey.generate())
    return ModelSlot(LoadedModel(OnnxScorer(model_bytes, manifest), manifest)), model_bytes, spec


def bare_session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def per_call_us(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    def run() -> float:
        start = time.thread_time()
        for _ in range(calls):
            fn()
        return (time.thread_time() - start) / calls * 1e6

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    slot, model_bytes, spec = build_slot()
    session = bare_session(model_bytes)
    repeats = 3 if args.quick else 15
    figures = []
    for batch in (1, 256):
        raw = synthetic_raw(batch, seed=2)
        normalized = spec.transform(raw)  # the anchor gets the same records, already normalized
        scorer = slot.current.scorer if slot.current else None
        assert scorer is not None
        agent_scores = scorer.score_raw(raw)
        bare_scores = session.run([OUTPUT_NAME], {INPUT_NAME: normalized})[0].reshape(-1)
        if not np.array_equal(agent_scores, bare_scores):
            raise SystemExit(f"batch {batch}: the agent's scores differ from the bare call's")

        def agent_call(raw: npt.NDArray[np.float64] = raw) -> object:
            loaded = slot.current  # what the agent does per batch: one reference, then score
            assert loaded is not None
            return loaded.scorer.score_raw(raw)

        def bare_call(normalized: npt.NDArray[np.float32] = normalized) -> object:
            return session.run([OUTPUT_NAME], {INPUT_NAME: normalized})

        calls = max(20, (300 if args.quick else 4000) // max(1, batch // 16))
        agent, bare = interleaved(
            [per_call_us(agent_call, calls), per_call_us(bare_call, calls)],
            repeats=repeats,
            units=["µs/call", "µs/call"],
        )
        figures.append(
            Figure(
                figure=f"1{'a' if batch == 1 else 'b'} scoring in the agent, batch {batch}",
                fedforge=agent,
                anchor=bare,
                anchor_name="bare InferenceSession.run (1 thread)",
                better="lower",
                goal=GOAL,
                goal_met=agent.median <= 2 * bare.median,
                notes=(
                    f"fraud MLP exported by server.release.export; agent = slot.current.scorer.score_raw on raw "
                    f"float64 values incl. normalization; anchor = session.run on the same rows pre-normalized; "
                    f"{calls} calls per repeat, thread CPU time; scores checked bit-identical."
                ),
                extra={
                    "batch": batch,
                    "agent_records_per_s": batch / agent.median * 1e6,
                    "bare_records_per_s": batch / bare.median * 1e6,
                    "agent_over_bare": agent.median / bare.median,
                },
            )
        )
    write_result("bench_scoring", figures, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
