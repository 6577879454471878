"""Figure 4: FedAvg of 100 updates x 1 M float32 parameters on the CPU, fedforge against Flower.

Both sides get the identical replies: 100 ArrayRecords (the .npy bytes Flower keeps) with a
``num-examples`` weight each.

- 4a, the kernel: ``server.federation.aggregate.aggregate_records`` (zero-copy views of the
  bytes, the blocked one-pass kernel of ``server.aggregation.fedavg`` with its compiled loop
  on its default thread count, an ArrayRecord out) against Flower's
  ``aggregate_arrayrecords``; the results must be bit-identical (the issue asks 1e-6). Timed
  alongside: the same kernel with its NumPy loop only (what runs without Numba), and the
  memory floor, one read pass over the same bytes on one thread and on the kernel's threads.
- 4b, what a deployment round runs: ``SanitizedFedAvg.aggregate_train`` (reply checks, NaN/Inf
  and norm screening, weighted metrics) against Flower's ``FedAvg.aggregate_train`` (which
  checks nothing of the values) on the same 100 Messages.

Run: ``python -m benchmarks.bench_aggregation [--quick] [--out DIR]``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.task_identity import TaskIdentity

import server.aggregation.compiled  # noqa: F401  (Numba loaded before the records are built: see main)
from benchmarks.harness import Figure, interleaved, parse_args, write_result
from server.aggregation.fedavg import fedavg, resolve_workers
from server.federation.aggregate import aggregate_records, record_views, to_record
from server.federation.strategy import SanitizedFedAvg

GOAL = "fedforge >= 5x faster than Flower"
GOAL_RATIO = 5.0
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Size:
    updates: int
    shapes: tuple[tuple[int, ...], ...]
    repeats: int

    @property
    def parameters(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


# An MLP of ~1 M parameters (784 -> 1024 -> 200 -> 10): a few big layers and small biases.
FULL = Size(100, ((1024, 784), (1024,), (200, 1024), (200,), (10, 200), (10,)), repeats=15)
QUICK = Size(20, ((256, 256), (256,), (64, 256), (64,)), repeats=3)


def make_records(size: Size, seed: int = 0) -> tuple[list[ArrayRecord], list[int]]:
    rng = np.random.default_rng(seed)
    records = [
        ArrayRecord(
            {f"layer{j}": Array(rng.standard_normal(s, dtype=np.float32) * 0.05) for j, s in enumerate(size.shapes)}
        )
        for _ in range(size.updates)
    ]
    weights = [int(w) for w in rng.integers(50, 5000, size=size.updates)]
    return records, weights


@contextmanager
def superlink_identity() -> Iterator[None]:
    """Flower builds Messages only inside a run; give this process the SuperLink's identity."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def make_replies(records: Sequence[ArrayRecord], weights: Sequence[int]) -> list[Message]:
    replies = []
    for node, (record, weight) in enumerate(zip(records, weights, strict=True), start=2):
        instruction = Message(
            RecordDict({"config": ConfigRecord({"server-round": 1})}),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
            group_id="1",
        )
        metrics = MetricRecord({"num-examples": weight, "train-loss": 0.1 + node * 1e-3})
        replies.append(Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=instruction))
    return replies


def max_abs_diff(a: ArrayRecord, b: ArrayRecord) -> float:
    assert list(a.keys()) == list(b.keys())
    return max(float(np.max(np.abs(a[k].numpy().astype(np.float64) - b[k].numpy()), initial=0.0)) for k in a)


def kernel_figure(size: Size, records: list[ArrayRecord], weights: list[int]) -> Figure:
    contents = [
        RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": w})})
        for r, w in zip(records, weights, strict=True)
    ]
    ours = aggregate_records(records, weights)
    theirs = aggregate_arrayrecords(contents, "num-examples")
    diff = max_abs_diff(ours, theirs)
    numpy_diff = max_abs_diff(numpy_loop(records, weights), theirs)
    if diff != 0 or numpy_diff != 0:
        raise SystemExit(f"fedforge is not bit-identical to Flower: max |diff| {diff:.3g}, NumPy loop {numpy_diff:.3g}")
    views = [[np.ravel(v) for v in record_views(r)] for r in records]
    threads = resolve_workers(None, size.updates * size.parameters)
    pool = ThreadPoolExecutor(max_workers=threads)
    cpu: dict[str, list[float]] = {"fedforge": [], "flower": []}
    fed, flower, floor, floor_n, plain = interleaved(
        [
            with_cpu(lambda: aggregate_records(records, weights), cpu["fedforge"]),
            with_cpu(lambda: aggregate_arrayrecords(contents, "num-examples"), cpu["flower"]),
            lambda: read_pass(views),
            lambda: _none(list(pool.map(read_pass, [views[t::threads] for t in range(threads)]))),
            lambda: _none(numpy_loop(records, weights)),
        ],
        repeats=size.repeats,
        units=["s", "s", "s", "s", "s"],
    )
    pool.shutdown()
    cpu_fed, cpu_flower = (statistics.median(cpu[side][-size.repeats :]) for side in ("fedforge", "flower"))
    ratio = flower.median / fed.median
    return Figure(
        figure=f"4a FedAvg kernel, CPU, {size.updates} x {size.parameters / 1e6:.2g} M float32",
        fedforge=fed,
        anchor=flower,
        anchor_name="Flower aggregate_arrayrecords",
        better="lower",
        goal=GOAL,
        goal_met=ratio >= GOAL_RATIO,
        notes=(
            f"identical ArrayRecords in, results bit-identical (max |diff| {diff:.2g}; the issue asks "
            f"{TOLERANCE:g}); the bytes are read in place, once, in cache-sized blocks, on {threads} thread(s), "
            f"by the compiled loop (eight updates per pass over the accumulator, Flower's roundings). The NumPy "
            f"loop alone (what runs without Numba, also bit-identical: multiply then add per update) took "
            f"{plain.median:.3g} s ({plain.low:.3g}..{plain.high:.3g}), {flower.median / plain.median:.2g}x "
            f"faster than Flower. "
            f"Memory floor measured alongside: one read pass over the same bytes (a dot product per array) took "
            f"{floor.median:.3g} s ({floor.low:.3g}..{floor.high:.3g}) on one thread, {floor_n.median:.3g} s "
            f"({floor_n.low:.3g}..{floor_n.high:.3g}) on {threads}, the honest floor for a {threads}-thread kernel: "
            f"fedforge runs at {fed.median / floor_n.median:.2g}x it ({fed.median / floor.median:.2g}x the 1-thread "
            f"one) and no exact FedAvg on {threads} thread(s) can beat Flower by more than "
            f"{flower.median / floor_n.median:.2g}x on this machine ({flower.median / floor.median:.2g}x on one). "
            f"CPU time per call (all threads, less sensitive to a busy machine): fedforge {cpu_fed:.3g} s, "
            f"Flower {cpu_flower:.3g} s ({cpu_flower / cpu_fed:.2g}x)"
        ),
        extra={
            "max_abs_diff": diff,
            "threads": threads,
            "floor_s": floor.median,
            "floor_threads_s": floor_n.median,
            "fedforge_over_floor": fed.median / floor.median,
            "fedforge_over_floor_threads": fed.median / floor_n.median,
            "cpu_s": cpu_fed,
            "flower_cpu_s": cpu_flower,
            "numpy_loop_s": plain.median,
            "numpy_loop_ratio": flower.median / plain.median,
        },
    )


def strategy_figure(size: Size, records: list[ArrayRecord], weights: list[int]) -> Figure:
    with superlink_identity():
        replies = make_replies(records, weights)
        ours = SanitizedFedAvg(min_nodes=1, device="cpu")
        theirs = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        ours_arrays, _ = ours.aggregate_train(1, replies)
        theirs_arrays, _ = theirs.aggregate_train(1, replies)
        if ours_arrays is None or theirs_arrays is None:
            raise SystemExit("an aggregation returned nothing")
        if ours.outcomes[1].participants != size.updates:
            raise SystemExit(f"SanitizedFedAvg dropped replies: {ours.outcomes[1].reasons[:3]}")
        diff = max_abs_diff(ours_arrays, theirs_arrays)
        if diff != 0:
            raise SystemExit(f"SanitizedFedAvg is not bit-identical to FedAvg: max |diff| {diff:.3g}")
        fed, flower = interleaved(
            [lambda: _none(ours.aggregate_train(1, replies)), lambda: _none(theirs.aggregate_train(1, replies))],
            repeats=size.repeats,
            units=["s", "s"],
        )
    ratio = flower.median / fed.median
    return Figure(
        figure=f"4b FedAvg round aggregation with sanity checks, {size.updates} x {size.parameters / 1e6:.2g} M",
        fedforge=fed,
        anchor=flower,
        anchor_name="Flower FedAvg.aggregate_train (no value checks)",
        better="lower",
        goal=GOAL,
        goal_met=ratio >= GOAL_RATIO,
        notes=f"fedforge also screens every update for NaN/Inf and its norm; max |diff| {diff:.2g}",
        extra={"max_abs_diff": diff},
    )


def numpy_loop(records: Sequence[ArrayRecord], weights: Sequence[int]) -> ArrayRecord:
    """``aggregate_records`` with the kernel's NumPy loop only, as it runs where Numba is missing."""
    averaged = fedavg([record_views(r) for r in records], weights, norms=False, compiled=False)
    return to_record(list(records[0].keys()), averaged.arrays)


def _none(_: object) -> None:
    return None


def read_pass(views: Sequence[Sequence[npt.NDArray[np.float32]]]) -> None:
    """The memory floor: every value read once (a dot product per array), nothing written."""
    for update in views:
        for x in update:
            np.dot(x, x)


def with_cpu(fn: Callable[[], object], sink: list[float]) -> Callable[[], None]:
    """``fn`` for the harness (which times wall clock), also recording its process CPU time in ``sink``."""

    def timed() -> None:
        start = time.process_time()
        fn()
        sink.append(time.process_time() - start)

    return timed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    size = QUICK if args.quick else FULL
    records, weights = make_records(size)
    figures = [kernel_figure(size, records, weights), strategy_figure(size, records, weights)]
    path = write_result("bench_aggregation", figures, quick=args.quick, out=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
