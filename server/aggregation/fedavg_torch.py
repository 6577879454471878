"""FedAvg with torch: on the GPU when there is one, with the same contract as ``fedavg.fedavg``.

Updates arrive as host bytes (decoded zero-copy by ``npy.npy_view``), so on a GPU the work
is bounded by the host-to-device copy, not by the arithmetic. Each update is packed into one
of two pinned host buffers (a parallel host memcpy), copied to the device asynchronously
(pinned memory moves at the link's full rate, pageable memory at a fraction of it) and
added into a flat device accumulator with its weight (one fused ``add_``) while the host
packs the next update: copy and compute overlap, and device memory stays at three model
sizes whatever K is. Squared norms are computed on the device in the same pass and read
back once at the end; the mean comes back into pinned host memory (``_pinned_copy``).

Updates already resident on the device as one ``(K, P)`` stack (produced there, or
staged there for several rounds of robust statistics) reduce with one matrix-vector
product: ``weighted_sum_resident``. That is the kernel measured against the device's copy
bandwidth.

On the CPU (``device="cpu"``) the same code runs without staging: ``torch.from_numpy``
views of the bytes are added in place (tests run this path; production uses
``fedavg.fedavg`` on CPUs, which is Flower-exact).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import torch

from server.aggregation.fedavg import Averaged, Update, accumulator_dtype, check_layout, normalised
from server.errors import AggregationError


@contextmanager
def readonly_ok() -> Iterator[None]:
    """Silences torch's warning on tensors over read-only arrays: the updates' bytes are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        yield


def resolve_device(device: str) -> torch.device:
    """``"auto"``: the GPU when torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise AggregationError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AggregationError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def _tensor(layer: npt.NDArray[np.generic]) -> torch.Tensor:
    """A flat CPU tensor over the layer's memory (torch takes native byte order only)."""
    flat = np.ravel(layer)
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return torch.from_numpy(flat)


def fedavg_torch(updates: Sequence[Update], weights: Sequence[float], *, device: str = "auto") -> Averaged:
    """Weighted mean of ``updates`` computed with torch on ``device``; the result is on the host.

    The accumulator is float64 if any layer is float64 (or not a float), else float32; the
    results agree with ``fedavg.fedavg`` to float32 rounding (a fused multiply-add rounds
    once where NumPy rounds twice).
    """
    factors = normalised(weights)
    layout = check_layout(updates)
    if len(updates) != len(factors):
        raise AggregationError(f"{len(updates)} updates but {len(factors)} weights")
    dev = resolve_device(device)
    out_dtypes = [accumulator_dtype(dtype) for _, dtype in layout]
    acc_dtype = torch.float64 if any(d == np.float64 for d in out_dtypes) else torch.float32
    sizes = [math.prod(shape) for shape, _ in layout]
    offsets = [0, *itertools.accumulate(sizes)][:-1]
    total = sum(sizes)
    with torch.no_grad(), readonly_ok():
        if dev.type == "cuda":
            acc, sq = _accumulate_streamed(updates, factors, offsets, sizes, total, acc_dtype, dev)
            flat = _pinned_copy(acc)
        else:
            acc, sq = _accumulate_in_place(updates, factors, offsets, sizes, total, acc_dtype)
            flat = acc.numpy()
        norms = sq.cpu().numpy().astype(np.float64)
    arrays = [
        flat[off : off + n].astype(dtype, copy=False).reshape(shape)
        for off, n, dtype, (shape, _) in zip(offsets, sizes, out_dtypes, layout, strict=True)
    ]
    return Averaged(arrays, norms)


def _accumulate_in_place(
    updates: Sequence[Update],
    factors: list[float],
    offsets: list[int],
    sizes: list[int],
    total: int,
    acc_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.zeros(total, dtype=acc_dtype)
    sq = torch.zeros(len(updates), dtype=torch.float64)
    for k, update in enumerate(updates):
        for layer, off, n in zip(update, offsets, sizes, strict=True):
            x = _tensor(layer)
            if x.dtype != acc_dtype:
                x = x.to(acc_dtype)
            acc[off : off + n].add_(x, alpha=factors[k])
            sq[k] += float(torch.dot(x, x))
    return acc, sq


def _accumulate_streamed(
    updates: Sequence[Update],
    factors: list[float],
    offsets: list[int],
    sizes: list[int],
    total: int,
    acc_dtype: torch.dtype,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Double-buffered: pack update k+1 on the host while update k copies and accumulates."""
    acc = torch.zeros(total, dtype=acc_dtype, device=dev)
    sq = torch.zeros(len(updates), dtype=torch.float64, device=dev)
    stages = [torch.empty(total, dtype=acc_dtype, pin_memory=True) for _ in range(2)]
    landed = [torch.empty(total, dtype=acc_dtype, device=dev) for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]
    for k, update in enumerate(updates):
        slot = k % 2
        pending = copied[slot]
        if pending is not None:
            pending.synchronize()  # the copy out of this pinned buffer has finished: reuse it
        stage = stages[slot]
        for layer, off, n in zip(update, offsets, sizes, strict=True):
            stage[off : off + n].copy_(_tensor(layer))
        landed[slot].copy_(stage, non_blocking=True)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        copied[slot] = event
        acc.add_(landed[slot], alpha=factors[k])
        sq[k] = torch.dot(landed[slot], landed[slot]).to(torch.float64)
    torch.cuda.synchronize(dev)
    return acc, sq


def _pinned_copy(tensor: torch.Tensor) -> npt.NDArray[np.floating]:
    """The device result in pinned host memory, viewed by NumPy (the view keeps the block alive).

    A copy into fresh pageable memory is staged by the driver and faults every page in: on the
    H200 machine measured (benchmarks/results.md, 5b) 40 MB took 33 ms that way, against under
    a millisecond into pinned memory. The caching host allocator hands the block back when the
    caller drops the model, so the next round reuses it instead of pinning anew.
    """
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return as_numpy(host)


def weighted_sum_resident(stack: torch.Tensor, weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """FedAvg of K updates already on the device as a ``(K, P)`` stack: (mean, squared norms).

    One matrix-vector product reads the stack once; the norms read it once more. Both stay
    on the stack's device (no synchronisation here).
    """
    if stack.dim() != 2 or stack.shape[0] != len(weights):
        raise AggregationError(f"stack of shape {tuple(stack.shape)} does not match {len(weights)} weights")
    factors = torch.tensor(normalised(weights), dtype=stack.dtype, device=stack.device)
    with torch.no_grad():
        mean = factors @ stack
        # In the stack's dtype: a float64 reduction could materialise a float64 copy of the stack.
        sq = torch.linalg.vector_norm(stack, dim=1).to(torch.float64).square()
    return mean, sq


def as_numpy(tensor: torch.Tensor) -> npt.NDArray[np.floating]:
    """A device result brought to the host (synchronises)."""
    array: npt.NDArray[np.floating] = tensor.detach().cpu().numpy()
    return array
