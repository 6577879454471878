"""``fedforge data ...`` and ``fedforge replay ...``: prepare a data set, then stream it to a fleet.

Exit codes follow shared.cli: 0 success, 1 runtime failure (download, broker), 2 usage.
Results go to stdout for scripts; progress and errors go through logging and stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.datasets import fraud
from shared.datasets.split import dirichlet_partition, read_index, read_partition, time_split, write_split
from shared.errors import FedforgeError
from shared.schemas import INGEST_WIRE_FORMATS

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DATASETS = ("fraud",)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


def _data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedforge data", description="fetch and split data sets")
    sub = parser.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="download, verify and cache a data set")
    fetch.add_argument("dataset", choices=DATASETS)
    fetch.add_argument("--cache-dir", type=Path, default=None, help="where the Parquet cache lives")
    split = sub.add_parser("split", help="time split for the server plus Dirichlet non-IID agent parts")
    split.add_argument("dataset", choices=DATASETS)
    split.add_argument("--agents", type=int, required=True, help="number of agent partitions")
    split.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration: smaller is more skewed")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", type=Path, required=True, help="output directory")
    split.add_argument("--bootstrap-frac", type=float, default=0.1, help="earliest share kept by the server")
    split.add_argument("--holdout-frac", type=float, default=0.15, help="latest share kept by the server")
    split.add_argument("--min-size", type=int, default=1, help="fewest rows per agent part")
    split.add_argument("--synthetic", type=int, default=None, metavar="N", help="use N synthetic rows (offline)")
    split.add_argument("--fraud-rate", type=float, default=0.02, help="positive share of --synthetic data")
    split.add_argument("--cache-dir", type=Path, default=None)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


def _split(args: argparse.Namespace) -> int:
    if args.agents < 1:
        _err("fedforge data split: --agents must be >= 1")
        return EXIT_USAGE
    if args.synthetic is not None:
        df = fraud.synthetic(args.synthetic, fraud_rate=args.fraud_rate, seed=args.seed)
        source = f"synthetic({args.synthetic}, fraud_rate={args.fraud_rate}, seed={args.seed})"
    else:
        df = fraud.load(args.cache_dir)
        source = str(fraud.cache_path(args.cache_dir))
    split = time_split(df, bootstrap_frac=args.bootstrap_frac, holdout_frac=args.holdout_frac)
    parts = dirichlet_partition(split.pool, args.agents, alpha=args.alpha, seed=args.seed, min_size=args.min_size)
    meta = {
        "dataset": args.dataset,
        "source": source,
        "alpha": args.alpha,
        "seed": args.seed,
        "bootstrap_frac": args.bootstrap_frac,
        "holdout_frac": args.holdout_frac,
    }
    index_path = write_split(split, parts, args.out, meta=meta)
    index = read_index(args.out)
    _out(f"wrote {index_path}")
    for name in ("bootstrap", "holdout"):
        entry = index[name]
        _out(f"  {entry['file']:<20} {entry['rows']:>8} rows {entry['positives']:>5} positives")
    for entry in index["agents"]:
        _out(f"  {entry['file']:<20} {entry['rows']:>8} rows {entry['positives']:>5} positives")
    return EXIT_OK


def data_command(argv: Sequence[str]) -> int:
    """``fedforge data fetch fraud [--cache-dir D]`` | ``fedforge data split fraud --agents N ...``."""
    args = _parse(_data_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        if args.action == "fetch":
            path = fraud.fetch(args.cache_dir)
            rows = len(fraud.load(args.cache_dir))
            _out(f"{path} ({rows} rows)")
            return EXIT_OK
        return _split(args)
    except FedforgeError as exc:
        _err(f"fedforge data {args.action}: {exc}")
        return EXIT_FAILURE


def _replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedforge replay", description="stream agent parts to a fleet over MQTT")
    parser.add_argument("--broker", required=True, help="mqtt://host:port")
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--split-dir", type=Path, required=True, help="a directory written by `fedforge data split`")
    parser.add_argument("--devices", required=True, help="d1,d2,...: device i replays agent-{i}.parquet")
    parser.add_argument("--rate", type=float, default=50.0, help="records per second per device (0: no pacing)")
    parser.add_argument("--batch", type=int, default=10, help="records per MQTT message")
    parser.add_argument("--label-delay", type=float, default=5.0, help="seconds before a batch's labels follow")
    parser.add_argument("--no-labels", action="store_true", help="send no labels")
    parser.add_argument("--limit", type=int, default=None, help="at most N records per device")
    parser.add_argument(
        "--wire-format",
        choices=INGEST_WIRE_FORMATS,
        default="records",
        help="ingest form: JSON record objects, packed JSON rows, or the binary frame (NaN goes out as a missing "
        "value in each; infinite values only in the binary frame)",
    )
    return parser


def replay_command(argv: Sequence[str]) -> int:
    """``fedforge replay --broker URL --fleet F --split-dir DIR --devices d1,d2 ...``; prints stats as JSON."""
    from simulations.replay import Replayer  # paho is only needed for this command

    args = _parse(_replay_parser(), argv)
    if isinstance(args, int):
        return args
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or args.batch < 1 or (args.limit is not None and args.limit < 0):
        _err("fedforge replay: need at least one device, --batch >= 1 and --limit >= 0")
        return EXIT_USAGE
    try:
        agents = read_index(args.split_dir)["agents"]
        if len(devices) > len(agents):
            _err(f"fedforge replay: {len(devices)} devices but {args.split_dir} holds only {len(agents)} agent parts")
            return EXIT_USAGE
        streams = {d: read_partition(args.split_dir / str(agents[i]["file"])) for i, d in enumerate(devices)}
        replayer = Replayer(
            args.broker,
            args.fleet,
            streams,
            rate=args.rate,
            batch=args.batch,
            label_delay=None if args.no_labels else args.label_delay,
            limit=args.limit,
            wire_format=args.wire_format,
        )
        log.info("replaying %s to fleet %s via %s", ", ".join(devices), args.fleet, args.broker)
        try:
            stats = replayer.run(until_done=True)
        except KeyboardInterrupt:
            replayer.stop()
            raise
    except FedforgeError as exc:
        _err(f"fedforge replay: {exc}")
        return EXIT_FAILURE
    _out(
        json.dumps(
            {
                "records": stats.records,
                "messages": stats.messages,
                "label_batches": stats.label_batches,
                "labels": stats.labels,
                "seconds": round(stats.seconds, 3),
                "per_device": stats.per_device,
            }
        )
    )
    return EXIT_OK
