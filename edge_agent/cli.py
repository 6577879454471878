"""``fedforge agent --config agent.toml``: build the settings, run the agent, map exit codes.

Exit codes: 0 stopped by SIGTERM/SIGINT, 1 the agent failed, 2 a configuration error. A
signed config command makes the agent stop cleanly and start again in the same process
(``os.execv``, same PID, so systemd and containers see no exit) with the new settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from edge_agent.config import load_agent_settings
from shared.errors import ConfigError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"fedforge {name}", description="run the fedforge edge agent")
    parser.add_argument("--config", type=Path, required=True, help="agent TOML file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def run_command(name: str, argv: list[str]) -> int:
    if name != "agent":
        logging.getLogger(__name__).error("edge_agent.cli does not handle %r", name)
        return EXIT_CONFIG
    try:
        args = _parser(name).parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_CONFIG
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        local = load_agent_settings(args.config)
        from edge_agent.remote_config import with_remote_settings
        from edge_agent.service import Agent  # after settings: a config error needs no ONNX import

        settings = with_remote_settings(local)
        agent = Agent(settings, local_settings=local)
        if settings.superlink_address and settings.federation_mode == "on_demand":
            from edge_agent.federation.on_demand import OnDemandCompanion

            if not settings.trusted_keys:  # on_demand is the default: say why no run will ever reach it
                log.warning(
                    "federation_mode is on_demand but no trusted_keys are set: every signed federation call "
                    'is refused and this agent never joins a run (set trusted_keys, or federation_mode = "always")'
                )

            agent.add_companion(OnDemandCompanion(settings, agent.trust, agent.link.subscribe))
        elif settings.superlink_address:
            from edge_agent.federation.supernode import SuperNodeCompanion

            agent.add_companion(SuperNodeCompanion(settings))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    try:
        asyncio.run(agent.run_forever())
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except Exception:
        log.exception("agent failed")
        return EXIT_FAILURE
    if agent.restart_requested:
        restart()
    return EXIT_OK


def restart() -> None:
    """Start this agent again, as it was started: the settings are read anew."""
    log.info("restarting with the operator's remote settings")
    logging.shutdown()
    os.execv(sys.executable, sys.orig_argv)
