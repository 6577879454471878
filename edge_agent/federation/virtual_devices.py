"""Where a virtual device's ClientApp finds its data: the hook the digital twin fills.

On a real device the ClientApp reads the agent's SQLite store. In Flower's Simulation
Engine there is no agent: each virtual node has a ``partition-id`` in its node config, and
the process that hosts virtual devices (the twin's Ray actor) installs a source that maps a
partition id to its labelled rows. The edge package only defines the contract; it never
imports the twin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shared.errors import DatasetError

PARTITION_ID_KEY = "partition-id"  # set by Flower's Simulation Engine on every virtual node


class PartitionSource(Protocol):
    def labelled(self, partition_id: int, width: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        """Raw feature rows (n, width) and labels (n,) of one virtual device."""
        ...


_source: PartitionSource | None = None


def install(source: PartitionSource | None) -> None:
    """Make ``source`` this process's data for virtual devices (None removes it)."""
    global _source
    _source = source


def partition_id(node_config: Mapping[str, object]) -> int | None:
    """The virtual device this node is, or None on a real device."""
    value = node_config.get(PARTITION_ID_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DatasetError(f"node config {PARTITION_ID_KEY} is not a number: {value!r}")
    return int(value)


def labelled(partition: int, width: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    if _source is None:
        raise DatasetError(
            f"virtual device {partition}: no partition source installed in this process "
            "(virtual devices run only under the digital twin)"
        )
    return _source.labelled(partition, width)
