"""The virtual fleet: who each device is, who shows up each round, and what it costs.

Pure and deterministic under the scenario's seed: the ClientApp wrapper in every Ray actor
and the server in the driver compute the same plan independently, so no table of 1,000
devices travels with each message and a rerun repeats exactly. Times are simulated from the
profiles (never measured), so the report is the same on a laptop and on a cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

import numpy as np
import numpy.typing as npt

from simulations.twin.scenario import Scenario

MQTT_PUBLISH_OVERHEAD = 2 + 2 + 2  # fixed header, topic length, packet id (QoS 1), plus the topic itself


class Status(IntEnum):
    OK = 0
    NOT_SAMPLED = 1  # the server did not ask this device this round
    UNAVAILABLE = 2  # offline when the round started
    DROPPED = 3  # started, never replied


BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


def payload_bytes(tensor_sizes: list[int], precision: str) -> int:
    """Bytes of one model or update at ``precision`` (int8 adds one fp32 scale per tensor)."""
    values = sum(tensor_sizes) * BYTES_PER_VALUE[precision]
    return values + (4 * len(tensor_sizes) if precision == "int8" else 0)


@dataclass(frozen=True)
class DevicePlan:
    scenario: Scenario

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.scenario.seed, *stream])

    @cached_property
    def profile_index(self) -> npt.NDArray[np.intp]:
        weights = np.array([p.weight for p in self.scenario.profiles], dtype=np.float64)
        out: npt.NDArray[np.intp] = self._rng(1).choice(
            len(weights), size=self.scenario.devices, p=weights / weights.sum()
        )
        return out

    @cached_property
    def byzantine(self) -> npt.NDArray[np.bool_]:
        n = self.scenario.devices
        count = round(self.scenario.byzantine.share * n)
        mask = np.zeros(n, dtype=bool)
        mask[self._rng(2).permutation(n)[:count]] = True
        return mask

    def statuses(self, server_round: int) -> npt.NDArray[np.int8]:
        """Every device's status in ``server_round`` (the same in every process)."""
        s = self.scenario
        rng = self._rng(3, server_round)
        draws = rng.random((3, s.devices))
        prof = self.profile_index
        availability = np.array([p.availability for p in s.profiles])[prof]
        dropout = np.array([p.dropout for p in s.profiles])[prof]
        out = np.full(s.devices, Status.OK, dtype=np.int8)
        sampled = draws[0] < s.strategy.fraction
        if not sampled.any():  # the server always asks at least one device
            sampled[int(np.argmin(draws[0]))] = True
        out[~sampled] = Status.NOT_SAMPLED
        out[sampled & (draws[1] >= availability)] = Status.UNAVAILABLE
        out[(out == Status.OK) & (draws[2] < dropout)] = Status.DROPPED
        return out

    def device_seconds(
        self, examples: npt.NDArray[np.int64], down_bytes: int, up_bytes: int
    ) -> npt.NDArray[np.float64]:
        """Per device: download, local training, upload (latency each way), if it completes."""
        s = self.scenario
        prof = self.profile_index
        speed = np.array([p.compute_samples_per_s for p in s.profiles])[prof]
        down = np.array([p.downlink_mbps for p in s.profiles])[prof] * 1e6 / 8
        up = np.array([p.uplink_mbps for p in s.profiles])[prof] * 1e6 / 8
        latency = np.array([p.latency_ms for p in s.profiles])[prof] / 1e3
        compute = examples.astype(np.float64) * s.local_epochs / speed
        out: npt.NDArray[np.float64] = 2 * latency + down_bytes / down + compute + up_bytes / up
        return out


@dataclass(frozen=True)
class RoundCost:
    asked: int
    participants: int
    unavailable: int
    dropped: int
    bytes_down: int
    bytes_up: int
    simulated_s: float


def round_cost(
    plan: DevicePlan, statuses: npt.NDArray[np.int8], examples: npt.NDArray[np.int64], model_bytes: int
) -> RoundCost:
    """What one round costs the fleet: a synchronous round ends with its slowest reply, or at
    the server's timeout when a device it asked dropped out mid-round."""
    asked = statuses != Status.NOT_SAMPLED
    started = (statuses == Status.OK) | (statuses == Status.DROPPED)
    ok = statuses == Status.OK
    seconds = plan.device_seconds(examples, model_bytes, model_bytes)
    slowest = float(seconds[ok].max()) if ok.any() else 0.0
    timeout = plan.scenario.network.round_timeout_s
    dropped = int((statuses == Status.DROPPED).sum())
    simulated = timeout if dropped or not ok.any() else min(slowest, timeout)
    return RoundCost(
        asked=int(asked.sum()),
        participants=int(ok.sum()),
        unavailable=int((statuses == Status.UNAVAILABLE).sum()),
        dropped=dropped,
        bytes_down=int(started.sum()) * model_bytes,
        bytes_up=int(ok.sum()) * model_bytes,
        simulated_s=simulated,
    )


@dataclass(frozen=True)
class DistributionCost:
    """Publishing one release to the whole fleet over MQTT, chunked like the release publisher."""

    model_bytes: int
    chunks: int
    bytes_per_device: int
    fleet_bytes: int
    device_seconds_p50: float
    device_seconds_max: float
    broker_seconds: float
    fleet_seconds: float


def distribution_cost(plan: DevicePlan, model_bytes: int, topic_length: int = 60) -> DistributionCost:
    s = plan.scenario
    chunks = max(1, math.ceil(model_bytes / s.network.chunk_size))
    per_device = model_bytes + chunks * (MQTT_PUBLISH_OVERHEAD + topic_length)
    prof = plan.profile_index
    down = np.array([p.downlink_mbps for p in s.profiles])[prof] * 1e6 / 8
    latency = np.array([p.latency_ms for p in s.profiles])[prof] / 1e3
    # QoS 1: one acknowledgement round trip per chunk at most in flight, then the bytes.
    seconds = chunks * latency + per_device / down
    fleet = per_device * s.devices
    broker = fleet / (s.network.broker_egress_mbps * 1e6 / 8)
    return DistributionCost(
        model_bytes=model_bytes,
        chunks=chunks,
        bytes_per_device=per_device,
        fleet_bytes=fleet,
        device_seconds_p50=float(np.median(seconds)),
        device_seconds_max=float(seconds.max()),
        broker_seconds=broker,
        fleet_seconds=max(float(seconds.max()), broker),
    )
