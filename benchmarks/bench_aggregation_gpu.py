"""Figure 5: FedAvg of 100 updates x 10 M float32 parameters on a GPU, against the copy bandwidth.

Needs a CUDA build of torch and a GPU (docs/aggregation.md, "On a GPU"; on a borrowed GPU
machine, benchmarks/device/README.md). Measured, all in one run:

- 5a, updates resident on the device as one (K, P) stack: ``weighted_sum_resident`` (the
  weighted mean and every update's squared norm) against a device-to-device copy of the same
  bytes (``torch.Tensor.copy_``), the bandwidth floor; goal within 2x of it.
- 5b, the deployment's path from the replies' ``.npy`` bytes in host memory:
  ``fedavg_torch(device="cuda")`` (pinned double-buffered staging, asynchronous copies,
  fused accumulation) against a pinned host-to-device copy of the same bytes, the floor of
  any path that starts on the host; goal within 2x of it.
- 5c, the CPU path on the same replies, checked against the GPU result (max |diff| <= 1e-6),
  timed against Flower's ``aggregate_arrayrecords`` on the same ArrayRecords.

Without CUDA the figure is reported as not measured (goal n/a, with the reason), and the torch
path is still checked against the CPU kernel (Flower's bits) on the CPU.

Run: ``python -m benchmarks.bench_aggregation_gpu [--quick] [--out DIR]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from benchmarks.harness import Figure, Sample, parse_args, repeat, write_result
from server.aggregation.fedavg import default_workers, fedavg
from server.aggregation.fedavg_torch import fedavg_torch, readonly_ok, weighted_sum_resident
from server.aggregation.npy import npy_bytes, npy_view

TOLERANCE = 1e-6
FLOOR_GOAL = "within 2x of the bandwidth floor"


@dataclass(frozen=True)
class Size:
    updates: int
    parameters: int
    repeats: int
    cpu_repeats: int


FULL = Size(updates=100, parameters=10_000_000, repeats=20, cpu_repeats=3)
QUICK = Size(updates=10, parameters=1_000_000, repeats=5, cpu_repeats=2)
CHECK = Size(updates=8, parameters=200_000, repeats=1, cpu_repeats=1)  # the CPU-only correctness check


def cuda_seconds(fn: Callable[[], object]) -> float:
    """Device time of ``fn``'s kernels (CUDA events), in seconds."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return float(start.elapsed_time(stop)) / 1000.0


def weights_for(size: Size) -> list[int]:
    return [int(w) for w in np.random.default_rng(1).integers(50, 5000, size=size.updates)]


def host_updates(size: Size, seed: int = 0) -> list[bytes]:
    """One .npy payload per update, as a reply's bytes sit in the ServerApp's memory."""
    generator = torch.Generator().manual_seed(seed)
    return [npy_bytes((torch.randn(size.parameters, generator=generator) * 0.05).numpy()) for _ in range(size.updates)]


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0)) for x, y in zip(a, b, strict=True))


def not_measured(size: Size) -> list[Figure]:
    payloads = host_updates(CHECK)
    views = [[npy_view(p)] for p in payloads]
    weights = weights_for(CHECK)
    cpu = fedavg(views, weights)
    torch_cpu = fedavg_torch(views, weights, device="cpu")
    diff = max_abs_diff(torch_cpu.arrays, cpu.arrays)
    if diff > TOLERANCE:
        raise SystemExit(
            f"torch (CPU) and the CPU kernel (Flower's bits) disagree: max |diff| {diff:.3g} > {TOLERANCE}"
        )
    return [
        Figure(
            figure=f"5 FedAvg on GPU, {size.updates} x {size.parameters / 1e6:g} M",
            fedforge=Sample((diff,), "max abs diff, torch-CPU vs the CPU kernel"),
            anchor=None,
            anchor_name="device-to-device copy (not measured)",
            better="lower",
            goal=FLOOR_GOAL,
            goal_met=None,
            notes=(
                f"not measured: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
                f"only the torch path on the CPU was checked against the CPU kernel (Flower's bits) "
                f"({CHECK.updates} x {CHECK.parameters:,}: max |diff| {diff:.2g} <= {TOLERANCE:g})"
            ),
        )
    ]


def resident_figure(size: Size, weights: list[int]) -> Figure:
    stack = torch.randn(size.updates, size.parameters, device="cuda") * 0.05
    copy = torch.empty_like(stack)
    ours = repeat(lambda: cuda_seconds(lambda: weighted_sum_resident(stack, weights)), repeats=size.repeats, warmup=2)
    floor = repeat(lambda: cuda_seconds(lambda: copy.copy_(stack)), repeats=size.repeats, warmup=2)
    mean, _ = weighted_sum_resident(stack, weights)
    exact = (torch.tensor(weights, dtype=torch.float64, device="cuda") / sum(weights)) @ stack.double()
    diff = float((mean.double() - exact).abs().max())
    gigabytes = stack.numel() * stack.element_size() / 1e9
    return Figure(
        figure=f"5a FedAvg on GPU, resident, {size.updates} x {size.parameters / 1e6:g} M",
        fedforge=ours,
        anchor=floor,
        anchor_name="device-to-device copy of the same bytes",
        better="lower",
        goal=FLOOR_GOAL,
        goal_met=ours.median <= 2 * floor.median,
        notes=(
            f"{torch.cuda.get_device_name()}: weighted mean (one matrix-vector product) plus every update's norm, "
            f"{gigabytes:.1f} GB read twice; max |diff| to a float64 mean {diff:.2g}"
        ),
        extra={"fedforge_GBps": gigabytes / ours.median, "copy_GBps": gigabytes / floor.median, "max_abs_diff": diff},
    )


def h2d_floor(size: Size) -> Sample:
    """Pinned host-to-device copy of K x P float32: what any path starting from host memory must pay."""
    pinned = torch.empty(size.updates * size.parameters, dtype=torch.float32, pin_memory=True)
    landed = torch.empty_like(pinned, device="cuda")
    return repeat(lambda: cuda_seconds(lambda: landed.copy_(pinned, non_blocking=True)), repeats=size.repeats)


def pack_seconds(views: list[list[np.ndarray]]) -> float:
    """Host memcpy of every update into one pinned buffer: the staging step alone, no device."""
    pinned = torch.empty(views[0][0].size, dtype=torch.float32, pin_memory=True)
    started = time.perf_counter()
    for (layer,) in views:
        pinned.copy_(torch.from_numpy(layer))
    return time.perf_counter() - started


def pageable_seconds(views: list[list[np.ndarray]]) -> float:
    """Each update copied straight from its (pageable) bytes to the device: the path without staging."""
    landed = torch.empty(views[0][0].size, dtype=torch.float32, device="cuda")
    torch.cuda.synchronize()
    started = time.perf_counter()
    for (layer,) in views:
        landed.copy_(torch.from_numpy(layer))
    torch.cuda.synchronize()
    return time.perf_counter() - started


def host_figures(size: Size, weights: list[int]) -> list[Figure]:
    payloads = host_updates(size)
    with readonly_ok():
        views = [[npy_view(p)] for p in payloads]
        gpu = fedavg_torch(views, weights, device="cuda")
        ours = repeat(lambda: _none(fedavg_torch(views, weights, device="cuda")), repeats=max(3, size.repeats // 4))
        floor = h2d_floor(size)
        # Where 5b's time goes, for the notes: the host's staging copy, and the unstaged alternative.
        pack = repeat(lambda: pack_seconds(views), repeats=3)
        pageable = repeat(lambda: pageable_seconds(views), repeats=3)
    torch.cuda.empty_cache()
    gigabytes = size.updates * size.parameters * 4 / 1e9

    cpu = fedavg(views, weights, workers=default_workers())
    diff = max_abs_diff(cpu.arrays, gpu.arrays)
    norm_rel = float(np.max(np.abs(cpu.norms() - gpu.norms()) / cpu.norms()))
    records = [
        ArrayRecord({"w": Array(dtype="float32", shape=(size.parameters,), stype="numpy.ndarray", data=p)})
        for p in payloads
    ]
    contents = [
        RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": w})})
        for r, w in zip(records, weights, strict=True)
    ]
    flower_out = aggregate_arrayrecords(contents, "num-examples")
    flower_diff = max_abs_diff([flower_out["w"].numpy()], gpu.arrays)
    cpu_time = repeat(
        lambda: _none(fedavg(views, weights, workers=default_workers())), repeats=size.cpu_repeats, warmup=0
    )
    flower_time = repeat(
        lambda: _none(aggregate_arrayrecords(contents, "num-examples")), repeats=size.cpu_repeats, warmup=0
    )
    label = f"{size.updates} x {size.parameters / 1e6:g} M"
    return [
        Figure(
            figure=f"5b FedAvg on GPU from host bytes, {label}",
            fedforge=ours,
            anchor=floor,
            anchor_name="pinned host-to-device copy of the same bytes",
            better="lower",
            goal=FLOOR_GOAL,
            goal_met=ours.median <= 2 * floor.median,
            notes="the path a round takes: .npy bytes viewed in place, packed into pinned buffers, copied while "
            f"the previous update accumulates; host packing alone {gigabytes / pack.median:.1f} GB/s, "
            f"unstaged pageable copies {gigabytes / pageable.median:.1f} GB/s, pinned link "
            f"{gigabytes / floor.median:.1f} GB/s; {torch.get_num_threads()} torch threads",
            extra={
                "fedforge_GBps": gigabytes / ours.median,
                "h2d_GBps": gigabytes / floor.median,
                "pack_GBps": gigabytes / pack.median,
                "pageable_GBps": gigabytes / pageable.median,
            },
        ),
        Figure(
            figure=f"5c FedAvg CPU path checked against the GPU, {label}",
            fedforge=cpu_time,
            anchor=flower_time,
            anchor_name="Flower aggregate_arrayrecords",
            better="lower",
            goal=f"CPU == GPU within {TOLERANCE:g}",
            goal_met=diff <= TOLERANCE and flower_diff <= TOLERANCE,
            notes=(
                f"max |CPU - GPU| {diff:.2g}, max |Flower - GPU| {flower_diff:.2g}, "
                f"norms relative {norm_rel:.2g}; {default_workers()} CPU worker thread(s)"
            ),
            extra={"max_abs_diff": diff, "flower_max_abs_diff": flower_diff},
        ),
    ]


def _none(_: object) -> None:
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    size = QUICK if args.quick else FULL
    started = time.perf_counter()
    if not torch.cuda.is_available():
        figures = not_measured(FULL)
    else:
        weights = weights_for(size)
        resident = resident_figure(size, weights)
        torch.cuda.empty_cache()
        figures = [resident, *host_figures(size, weights)]
    path = write_result("bench_aggregation_gpu", figures, quick=args.quick, out=args.out)
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
