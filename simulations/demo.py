"""``fedforge demo``: one full turn of the data flywheel on this machine.

Broker, server (SuperLink, registry, API), 3 agents (on-demand federation, the default:
each starts its SuperNode when the run calls it), replay of each agent's slice with
delayed labels, a 2-round federated training run, publication, and every agent swapping
in the new model. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared import topics
from shared.datasets import fraud as fraud_data
from shared.datasets.split import dirichlet_partition, read_agent_parts, time_split, write_split
from shared.mqtt import BrokerAddress, MqttClient
from simulations.broker import EmbeddedBroker
from simulations.fleet import FleetError, LocalFleet, agent_store_state
from simulations.replay import Replayer

log = logging.getLogger(__name__)


def prepare_split(out: Path, n_agents: int, synthetic: int | None, seed: int) -> Path:
    frame = fraud_data.synthetic(synthetic, seed=seed) if synthetic else fraud_data.load()
    split = time_split(frame, bootstrap_frac=0.05, holdout_frac=0.15)
    parts = dirichlet_partition(split.pool, n_agents, alpha=1.0, seed=seed)
    write_split(split, parts, out, meta={"synthetic": synthetic, "seed": seed})
    return out


MALFORMED_SAMPLES: tuple[bytes, ...] = (
    b'{"schema_version": 1, "record_id": "bad-json"',
    b'{"schema_version": 1, "record_id": "nan", "ts": 1.0, "features": {"V1": NaN}}',
    b'{"schema_version": 1, "record_id": "wrong-type", "ts": 1.0, "features": "none"}',
    b'{"schema_version": 1, "record_id": "extra", "ts": 1.0, "features": {}, "surprise": true}',
    b"\xff\xfe not even text",
)


def send_malformed(broker_url: str, fleet: str, devices: list[str], per_device: int) -> int:
    """Faulty sensors: each agent must quarantine these with a reason and keep going."""
    client = MqttClient(BrokerAddress.parse(broker_url), f"fedforge-demo-faults-{time.time_ns()}", persistent=False)
    client.start()
    try:
        sent = 0
        for device in devices:
            for i in range(per_device):
                client.publish_and_wait(topics.ingest(fleet, device), MALFORMED_SAMPLES[i % len(MALFORMED_SAMPLES)])
                sent += 1
        return sent
    finally:
        client.stop()


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="fedforge-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    broker = None
    broker_url = args.broker
    if broker_url is None:
        broker = EmbeddedBroker()
        broker.start()
        broker_url = broker.url
    try:
        split_dir = prepare_split(root / "split", args.agents, args.synthetic, args.seed)
        parts = read_agent_parts(split_dir)
        with LocalFleet(
            root, broker_url, split_dir, n_agents=args.agents, fleet="demo", local_epochs=args.local_epochs
        ) as fleet:
            fleet.write_configs()
            fleet.start_server()
            v1 = fleet.latest_version()
            assert v1 is not None
            initial_auprc = float(fleet.get(f"/api/models/{v1}")["metrics"].get("auprc", float("nan")))
            fleet.start_agents()
            fleet.wait_serving(v1)
            log.info("all agents serve v%d; replaying records", v1)
            streams = dict(zip(fleet.device_ids, parts, strict=True))
            replayer = Replayer(
                broker_url, "demo", streams, rate=0, batch=200, label_delay=args.label_delay, limit=args.records
            )
            stats = replayer.run(until_done=True)
            send_malformed(broker_url, "demo", fleet.device_ids, args.malformed)
            per_agent = min(min(len(p), args.records or len(p)) for p in parts)
            fleet.wait_labelled(per_agent, timeout=300)
            summary = fleet.train(args.rounds)
            if summary.get("exit_code") != 0 or summary.get("published_version") is None:
                raise FleetError(f"training run failed: {summary.get('error') or summary}")
            published = int(summary["published_version"])
            devices = fleet.wait_serving(published)
            final_auprc = float(fleet.get(f"/api/models/{published}")["metrics"].get("auprc", float("nan")))
            stores = {a.device_id: agent_store_state(a.data_dir / "agent.db") for a in fleet.agents}
            counters = {d: dev.get("counters", {}) for d, dev in devices.items()}
            result = {
                "demo": "ok",
                "agents": args.agents,
                "rounds": args.rounds,
                "published_version": published,
                "serving": {d: dev["serving_version"] for d, dev in sorted(devices.items())},
                "signature_verified": all(bool(dev.get("signature_verified")) for dev in devices.values())
                and all(s["installed_latest"] == published for s in stores.values()),
                "holdout": {"initial": {"auprc": round(initial_auprc, 4)}, "final": {"auprc": round(final_auprc, 4)}},
                "records": {
                    "ingested": sum(int(c.get("ingested", 0)) for c in counters.values()),
                    "quarantined": sum(int(c.get("quarantined", 0)) for c in counters.values()),
                    "scored": sum(int(c.get("scored", 0)) for c in counters.values()),
                },
            }
            table = [
                ("device", "serving", "ingested", "quarantined", "scored", "labelled", "trained"),
                *[
                    (
                        d,
                        str(devices[d]["serving_version"]),
                        *(
                            str(counters[d].get(k, 0))
                            for k in ("ingested", "quarantined", "scored", "labelled", "trained")
                        ),
                    )
                    for d in sorted(devices)
                ],
            ]
            extra = {
                "replayed_records": stats.records,
                "rounds": summary.get("rounds"),
                "train_seconds": summary.get("seconds"),
                "wall_seconds": round(time.monotonic() - started, 1),
                "workdir": str(root),
            }
            return {"result": result, "table": table, "extra": extra}
    finally:
        if broker is not None:
            broker.stop()


def demo_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedforge demo")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--records", type=int, default=20_000, help="records replayed per agent")
    parser.add_argument("--label-delay", type=float, default=2.0)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--malformed", type=int, default=10, help="faulty payloads sent to each agent")
    parser.add_argument("--synthetic", type=int, default=None, help="use N generated rows instead of the real set")
    parser.add_argument("--broker", default=None, help="broker URL (default: an embedded broker)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = run_demo(args)
    except Exception as exc:  # any failure still ends with the one-line JSON verdict
        log.exception("demo failed")
        sys.stdout.write(json.dumps({"demo": "failed", "error": str(exc)}) + "\n")
        return 1
    widths = [max(len(row[i]) for row in out["table"]) for i in range(len(out["table"][0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in out["table"]]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write(json.dumps(out["extra"]) + "\n")
    sys.stdout.write(json.dumps(out["result"]) + "\n")
    return 0
