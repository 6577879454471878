"""``fedforge server``, ``train``, ``keys``, ``devices``, ``users`` and ``tokens``.

Exit codes: 0 success; 1 runtime failure (a run that failed or was not published);
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from pathlib import Path

from shared.errors import ConfigError, FedforgeError

log = logging.getLogger(__name__)


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"fedforge {name}")
    parser.add_argument("--config", type=Path, help="server TOML file (FEDFORGE_* variables override it)")
    parser.add_argument("--log-level", default="INFO")
    if name == "devices":
        parser.add_argument("action", choices=["register", "unregister"])
        parser.add_argument("--public-key", type=Path, help="the device's node public key (supernode_key + .pub)")
        parser.add_argument("--node-id", help="unregister: the Flower node id (default: looked up by --public-key)")
        parser.add_argument("--name", help="register: a name shown by `flwr supernode list`")
    if name == "users":
        parser.add_argument("action", choices=["create", "list", "disable", "enable", "set-password", "set-role"])
        parser.add_argument("username", nargs="?")
        parser.add_argument("--role", choices=["viewer", "operator", "admin"], help="create (default viewer), set-role")
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin (else prompted twice)"
        )
        parser.add_argument("--no-password", action="store_true", help="create: a token-only user (cannot log in)")
    if name == "tokens":
        parser.add_argument("action", choices=["create", "list", "revoke"])
        parser.add_argument("token_id", nargs="?", help="revoke: the token id (tok-...)")
        parser.add_argument("--user", help="create: the user the token acts as; list: only theirs")
        parser.add_argument("--name", default="", help="create: a label (what the token is for)")
    if name == "train":
        parser.add_argument("--rounds", type=int, default=None, help="federated rounds (default: settings.rounds)")
        parser.add_argument("--min-agents", type=int, default=None)
        parser.add_argument(
            "--strategy", default=None, help="aggregation rule: fedavg, fedprox, median, trimmed-mean, krum, multi-krum"
        )
        parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run")
        parser.add_argument("--run-id", default=None)
    return parser


def run_command(name: str, argv: list[str]) -> int:
    args = _parser(name).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from server.config import load_server_settings

    try:
        settings = load_server_settings(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        if name == "server":
            from server.app import run_server
            from server.federation.flower import SuperLinkCompanion

            return run_server(settings, [SuperLinkCompanion(settings)], args.config)
        if name == "keys":
            from server.app import ensure_signing_key

            ensure_signing_key(settings)
            sys.stdout.write(f"{settings.signing_public_key}\n")
            return 0
        if name == "devices":
            return _devices(settings, args)
        if name in ("users", "tokens"):
            from server.auth_cli import run_auth_command

            return run_auth_command(settings, name, args)
        if name == "train":
            if args.config is None:
                log.error("fedforge train needs --config (the ServerApp reads the same file)")
                return 2
            return _train(settings, args.config, args)
    except FedforgeError as exc:
        log.error("%s", exc)
        return 1
    log.error("unknown command %s", name)
    return 2


def _devices(settings: object, args: argparse.Namespace) -> int:
    """Register or unregister a device's Flower node key; prints the node id."""
    from server.config import ServerSettings
    from server.federation.node_auth import key_fingerprint, node_id_of_key, register_device, unregister_device
    from server.registry.migrate import migrate
    from server.registry.sql import SqlRegistry

    assert isinstance(settings, ServerSettings)
    if args.action == "register" and args.public_key is None:
        log.error("fedforge devices register needs --public-key")
        return 2
    if args.action == "unregister" and args.public_key is None and args.node_id is None:
        log.error("fedforge devices unregister needs --node-id or --public-key")
        return 2
    migrate(settings.database_url)
    registry = SqlRegistry(settings.database_url)
    try:
        if args.action == "register":
            node_id = register_device(settings, registry, args.public_key, name=args.name)
        else:
            node_id = args.node_id or node_id_of_key(registry, args.public_key)
            fingerprint = key_fingerprint(args.public_key) if args.public_key is not None else None
            unregister_device(settings, registry, node_id, fingerprint=fingerprint)
    finally:
        registry.close()
    sys.stdout.write(json.dumps({"action": args.action, "node_id": node_id}) + "\n")
    return 0


def _train(settings: object, config_path: Path, args: argparse.Namespace) -> int:
    from server.config import ServerSettings
    from server.federation.calls import submit_called_run
    from server.federation.flower import wait_run
    from server.registry.migrate import migrate
    from server.registry.sql import SqlRegistry

    assert isinstance(settings, ServerSettings)
    rounds = args.rounds or settings.rounds
    min_agents = args.min_agents or settings.min_agents
    run_id = args.run_id or f"run-{uuid.uuid4().hex[:12]}"
    migrate(settings.database_url)
    strategy = args.strategy or settings.strategy
    flower_run_id = submit_called_run(settings, config_path, run_id, rounds, min_agents, strategy)
    log.info(
        "submitted training run %s (Flower run %s): %s, %d rounds, >= %d agents",
        run_id,
        flower_run_id,
        strategy,
        rounds,
        min_agents,
    )
    outcome = wait_run(settings, flower_run_id, args.timeout)
    registry = SqlRegistry(settings.database_url)
    try:
        record = registry.get_run(run_id)
        rounds_done = registry.list_rounds(run_id)
    finally:
        registry.close()
    summary = {
        "run_id": run_id,
        "flower_run_id": flower_run_id,
        "flower_status": outcome.status,
        "status": record.status if record else "unknown",
        "published_version": record.published_version if record else None,
        "error": (record.error if record else None) or (outcome.details or None),
        "rounds": [
            {
                "round": r.round,
                "participants": r.participants,
                "failures": r.failures,
                "auprc": r.metrics.get("auprc"),
                "duration_s": round(r.duration_s, 2),
            }
            for r in rounds_done
        ],
        "seconds": round(outcome.seconds, 1),
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0 if outcome.completed and record is not None and record.status == "succeeded" else 1
