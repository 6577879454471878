"""The Flower side of aggregation: ArrayRecords in, ArrayRecord out, kernels from server.aggregation.

An ``Array`` keeps its values as ``.npy`` bytes; they are viewed in place (no ``np.load``
copy) and handed to the pure kernels. Which kernel runs: the CUDA one when the settings
allow a GPU, torch sees one and the round is big enough to pay for the transfers; the
CPU one otherwise, which is Flower-exact (see ``server.aggregation.fedavg``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from server.aggregation.fedavg import Averaged, fedavg, screen
from server.aggregation.npy import npy_bytes, npy_view
from server.errors import AggregationError

log = logging.getLogger(__name__)

NUMPY_STYPE = "numpy.ndarray"  # flwr.common.constant.SType.NUMPY
# Below this many values in a round (K x P) the GPU's transfers and set-up cost more than they save.
GPU_MIN_VALUES = 1 << 24


def record_views(record: ArrayRecord) -> list[npt.NDArray[np.generic]]:
    """The record's arrays as read-only views of its bytes, in key order."""
    views = []
    for key, array in record.items():
        if array.stype != NUMPY_STYPE:
            raise AggregationError(f"array {key!r} is serialised as {array.stype!r}, not {NUMPY_STYPE!r}")
        try:
            views.append(npy_view(array.data))
        except AggregationError as exc:
            raise AggregationError(f"array {key!r}: {exc}") from None
    return views


def to_record(keys: Sequence[str], arrays: Sequence[npt.NDArray[np.generic]]) -> ArrayRecord:
    return ArrayRecord(
        {
            key: Array(dtype=str(a.dtype), shape=tuple(a.shape), stype=NUMPY_STYPE, data=npy_bytes(a))
            for key, a in zip(keys, arrays, strict=True)
        }
    )


def use_gpu(device: str, updates: int, values_per_update: int, *, exact: bool = False) -> bool:
    if exact or device == "cpu" or updates * values_per_update < GPU_MIN_VALUES:
        return False
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        return False
    import torch  # only a deployment with a GPU build pays for the import here

    return bool(torch.cuda.is_available())


def average(
    updates: Sequence[Sequence[npt.NDArray[np.generic]]],
    weights: Sequence[float],
    *,
    device: str = "cpu",
    workers: int | None = None,
    norms: bool = True,
    exact: bool = False,
) -> Averaged:
    """FedAvg (with its per-update squared norms unless ``norms=False``), on the GPU or the CPU per ``use_gpu``.

    ``workers``: CPU threads (``None``: ``server.aggregation.fedavg.resolve_workers`` decides).
    ``exact``: Flower's arithmetic bit for bit, which only the CPU kernel does, so never the GPU.
    The GPU path always computes the norms (they cost it nothing measurable).
    """
    values = sum(int(a.size) for a in updates[0]) if updates else 0
    if use_gpu(device, len(updates), values, exact=exact):
        from server.aggregation.fedavg_torch import fedavg_torch

        try:
            return fedavg_torch(updates, weights, device="cuda" if device == "auto" else device)
        except RuntimeError as exc:  # CUDA out of memory, a lost device: the CPU still gets the round done
            log.warning("GPU aggregation failed (%s); aggregating on the CPU", exc)
    return fedavg(updates, weights, workers=workers, norms=norms)


def screened_average(
    updates: Sequence[Sequence[npt.NDArray[np.generic]]],
    weights: Sequence[float],
    *,
    max_norm: float,
    device: str = "cpu",
    exact: bool = False,
) -> tuple[Averaged | None, dict[int, str]]:
    """``server.aggregation.fedavg.screen`` on the backend ``average`` picks."""
    return screen(updates, weights, max_norm=max_norm, mean=lambda u, w: average(u, w, device=device, exact=exact))


def aggregate_records(
    records: Sequence[ArrayRecord],
    weights: Sequence[float],
    *,
    device: str = "cpu",
    workers: int | None = None,
) -> ArrayRecord:
    """Drop-in for Flower's ``aggregate_arrayrecords`` on already-checked records (the benchmark's subject).

    Like Flower's, it checks no values, so it skips the norms the screening path needs.
    """
    if not records:
        raise AggregationError("no records to aggregate")
    keys = list(records[0].keys())
    views = [record_views(r) for r in records]
    averaged = average(views, weights, device=device, workers=workers, norms=False)
    return to_record(keys, averaged.arrays)
