"""Scenario files: what is accepted, what is refused and how clearly, where Ray is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from simulations.twin.engine import backend_config, ray_init_args
from simulations.twin.scenario import RAY_ADDRESS_ENV, load_scenario, parse_scenario

SHIPPED = sorted((Path(__file__).resolve().parents[3] / "simulations" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem


def test_shipped_scenarios_cover_the_issue() -> None:
    names = {p.stem for p in SHIPPED}
    assert {
        "fraud-baseline",
        "fraud-non-iid",
        "fraud-flaky",
        "fraud-byzantine-fedavg",
        "fraud-byzantine-robust",
    } <= names
    assert load_scenario(next(p for p in SHIPPED if p.stem == "fraud-scale-1000")).devices == 1000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "partition": {"aplha": 0.3}}, "partition.aplha: unknown key"),
        ({"name": "x", "strategy": {"name": "fedsgd"}}, "strategy.name"),
        ({"name": "x", "partition": {"kind": "natural"}}, "no natural device key"),
        ({"name": "x", "devices": 500, "data": {"rows": 400}}, "every device needs at least one"),
        ({"name": "x", "byzantine": {"share": 1.5}}, "byzantine.share"),
        ({"name": "x", "profiles": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"name": "x", "model": {"precision": "fp8"}}, "model.precision"),
        ({"devices": 3}, "name: Field required"),
    ],
)
def test_invalid_scenarios_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_scenario(data, "s.toml")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)


def test_ray_address_scenario_then_fedforge_env_then_ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = parse_scenario({"name": "x"})
    assert local.ray_address() is None
    assert ray_init_args(local, "tag")["address"] == "local"  # never an existing cluster by accident
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.3:6379")
    assert ray_init_args(local, "tag")["address"] == "10.0.0.3:6379"
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.2:6379")
    assert ray_init_args(local, "tag")["address"] == "10.0.0.2:6379"
    pinned = parse_scenario({"name": "x", "runtime": {"ray_address": "ray://head:10001"}})
    args = ray_init_args(pinned, "tag")
    assert args["address"] == "ray://head:10001"
    assert "num_cpus" not in args  # a cluster's resources are its own


def test_backend_resources_from_the_scenario() -> None:
    assert backend_config(parse_scenario({"name": "x"}), 2.0)["client_resources"]["num_cpus"] == 1.0
    four = parse_scenario({"name": "x", "runtime": {"actors": 4}})
    assert backend_config(four, 2.0)["client_resources"]["num_cpus"] == 0.5
