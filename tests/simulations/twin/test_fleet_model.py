"""The seeded device plan, the round prices and the tampering, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.twin import tamper
from simulations.twin.fleet_model import DevicePlan, Status, distribution_cost, payload_bytes, round_cost
from simulations.twin.scenario import parse_scenario


def _scenario(**extra: object):  # type: ignore[no-untyped-def]
    return parse_scenario({"name": "x", "devices": 1000, "data": {"rows": 20000}, **extra})


def test_plan_is_a_function_of_the_seed() -> None:
    flaky = [{"name": "p", "availability": 0.7, "dropout": 0.1}]
    a, b = DevicePlan(_scenario(seed=1, profiles=flaky)), DevicePlan(_scenario(seed=1, profiles=flaky))
    assert np.array_equal(a.statuses(3), b.statuses(3))
    assert not np.array_equal(a.statuses(3), DevicePlan(_scenario(seed=2, profiles=flaky)).statuses(3))
    assert not np.array_equal(a.statuses(3), a.statuses(4))


def test_availability_dropout_sampling_and_byzantine_shares() -> None:
    plan = DevicePlan(
        _scenario(
            profiles=[{"name": "p", "availability": 0.8, "dropout": 0.1}],
            strategy={"fraction": 0.5},
            byzantine={"share": 0.2},
        )
    )
    s = plan.statuses(1)
    assert 0.45 < np.mean(s != Status.NOT_SAMPLED) < 0.55
    asked = s != Status.NOT_SAMPLED
    assert 0.14 < np.mean(s[asked] == Status.UNAVAILABLE) < 0.26
    assert int(plan.byzantine.sum()) == 200


def test_round_cost_waits_for_the_slowest_or_the_timeout() -> None:
    scenario = parse_scenario(
        {
            "name": "x",
            "devices": 2,
            "data": {"rows": 1000},
            "profiles": [
                {"name": "p", "compute_samples_per_s": 100, "uplink_mbps": 8, "downlink_mbps": 8, "latency_ms": 0}
            ],
            "network": {"round_timeout_s": 99},
        }
    )
    plan = DevicePlan(scenario)
    examples = np.array([100, 300])
    ok = np.array([Status.OK, Status.OK], dtype=np.int8)
    cost = round_cost(plan, ok, examples, model_bytes=1_000_000)
    # 1 MB each way at 1 MB/s plus 300 examples at 100/s.
    assert cost.simulated_s == pytest.approx(2.0 + 3.0)
    assert (cost.bytes_down, cost.bytes_up, cost.participants) == (2_000_000, 2_000_000, 2)
    dropped = round_cost(plan, np.array([Status.OK, Status.DROPPED], dtype=np.int8), examples, 1_000_000)
    assert dropped.simulated_s == 99
    assert (dropped.bytes_down, dropped.bytes_up, dropped.dropped) == (2_000_000, 1_000_000, 1)


def test_precision_sets_bytes_and_bounds_the_error() -> None:
    assert payload_bytes([100, 10], "fp32") == 440
    assert payload_bytes([100, 10], "fp16") == 220
    assert payload_bytes([100, 10], "int8") == 110 + 8
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert np.max(np.abs(tamper.quantize(x, "fp16") - x)) < 1e-2
    assert np.max(np.abs(tamper.quantize(x, "int8") - x)) <= np.max(np.abs(x)) / 127 / 2 + 1e-6
    assert np.array_equal(tamper.quantize(x, "fp32"), x)


def test_attacks() -> None:
    base, new = [np.zeros(3, np.float32)], [np.ones(3, np.float32)]
    assert np.allclose(tamper.attack("sign-flip", new, base, scale=5, sigma=1, seed=0)[0], -5.0)
    assert np.isnan(tamper.attack("nan", new, base, scale=5, sigma=1, seed=0)[0]).all()
    noisy = tamper.attack("gaussian", new, base, scale=5, sigma=1, seed=0)[0]
    assert np.array_equal(noisy, tamper.attack("gaussian", new, base, scale=5, sigma=1, seed=0)[0])
    assert not np.allclose(noisy, 1.0)


def test_distribution_chunks_like_the_publisher() -> None:
    scenario = _scenario(network={"chunk_size": 262144})
    cost = distribution_cost(DevicePlan(scenario), model_bytes=600_000)
    assert cost.chunks == 3
    assert cost.fleet_bytes == cost.bytes_per_device * 1000
    assert cost.bytes_per_device > 600_000
    assert cost.fleet_seconds >= cost.device_seconds_max
