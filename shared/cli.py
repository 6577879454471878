"""The ``fedforge`` console script: a thin dispatcher to each process's own CLI.

Subcommands are resolved lazily by module name so that ``fedforge agent`` on a small
device never imports the cloud's dependencies (or torch), and ``shared`` keeps importing
neither side (the dispatch table is data, not an import).

Exit codes (all subcommands): 0 success, 1 runtime failure, 2 usage or configuration error,
130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("edge_agent.cli", "run the edge agent: fedforge agent --config agent.toml"),
    "server": ("server.cli", "run the cloud server: fedforge server --config server.toml"),
    "train": ("server.cli", "start a federated training run: fedforge train --config server.toml --rounds N"),
    "keys": ("server.cli", "create the operator signing key pair"),
    "devices": ("server.cli", "node authentication: fedforge devices register|unregister --public-key KEY.pub"),
    "users": ("server.cli", "operators: fedforge users create NAME --role admin | list | disable NAME"),
    "tokens": ("server.cli", "API tokens: fedforge tokens create --user NAME [--name LABEL] | list | revoke ID"),
    "data": ("simulations.cli", "data sets: fedforge data fetch fraud | fedforge data split ..."),
    "replay": ("simulations.cli", "replay a partition to agents over MQTT, labels after a delay"),
    "demo": ("simulations.cli", "one full turn of the flywheel on this machine"),
    "twin": ("simulations.twin.cli", "digital twin: fedforge twin run SCENARIO.toml | compare A.toml B.toml"),
}


def _usage() -> str:
    lines = ["usage: fedforge COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage() + "\n")
        return EXIT_OK if args else EXIT_USAGE
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"fedforge: unknown command {name!r}\n\n{_usage()}\n")
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name][0])
    entry: Callable[[str, list[str]], int] = module.run_command
    try:
        return entry(name, rest)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
