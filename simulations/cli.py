"""CLI of the simulation side: data sets, replay, and the demo."""

from __future__ import annotations

import logging


def run_command(name: str, argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if name == "data":
        from simulations.data_cli import data_command

        return data_command(argv)
    if name == "replay":
        from simulations.data_cli import replay_command

        return replay_command(argv)
    if name == "demo":
        from simulations.demo import demo_command

        return int(demo_command(argv))
    raise SystemExit(f"simulations.cli cannot run {name!r}")
