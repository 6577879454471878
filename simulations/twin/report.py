"""The report of a twin run (or of a comparison): summary.json, PNG plots and index.html.

matplotlib runs on its Agg backend (no display, chosen before pyplot is imported) and
every figure is closed after saving, so reports can be written from a daemon or a test.
The HTML is self-contained apart from the PNG files beside it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from shared.datasets.io import write_text_atomic

METRIC = "auprc"
SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
PLOTS = {
    "holdout.png": "Holdout AUPRC per round (dashed: centralized baseline on the pooled data)",
    "participation.png": "Devices per round: aggregated, offline, dropped mid-round, rejected",
    "bytes.png": "Bytes exchanged per round",
    "time.png": "Simulated wall-clock per round (device and network profiles)",
}


def _series(summary: dict[str, Any], path: Sequence[str]) -> list[float]:
    out = []
    for rnd in summary["rounds"]:
        value: Any = rnd
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out.append(float(value) if value is not None else math.nan)
    return out


def _rounds(summary: dict[str, Any]) -> list[int]:
    return [int(r["round"]) for r in summary["rounds"]]


def _plot_holdout(runs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in runs.items():
        xs = [0, *_rounds(s)]
        start = s["initial"].get(METRIC)
        line = ax.plot(
            xs, [start if start is not None else math.nan, *_series(s, ("holdout", METRIC))], marker="o", label=name
        )
        ax.plot(
            xs,
            [start if start is not None else math.nan, *_series(s, ("baseline", METRIC))],
            linestyle="--",
            color=line[0].get_color(),
            label=f"{name}: centralized",
        )
    ax.set_xlabel("round")
    ax.set_ylabel(f"holdout {METRIC.upper()}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_bars(runs: dict[str, dict[str, Any]], path: Path, series: dict[str, Sequence[str]], ylabel: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    n_runs = len(runs)
    width = 0.8 / max(n_runs * len(series), 1)
    slot = 0
    for name, s in runs.items():
        xs = _rounds(s)
        for label, key in series.items():
            offset = (slot - (n_runs * len(series) - 1) / 2) * width
            prefix = f"{name}: " if n_runs > 1 else ""
            ax.bar([x + offset for x in xs], _series(s, key), width=width, label=f"{prefix}{label}")
            slot += 1
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(runs: dict[str, dict[str, Any]], out: Path) -> list[str]:
    _plot_holdout(runs, out / "holdout.png")
    _plot_bars(
        runs,
        out / "participation.png",
        {
            "aggregated": ("participants",),
            "offline": ("unavailable",),
            "dropped": ("dropped",),
            "rejected": ("rejected",),
        },
        "devices",
    )
    _plot_bars(runs, out / "bytes.png", {"down": ("bytes_down",), "up": ("bytes_up",)}, "bytes")
    _plot_bars(runs, out / "time.png", {"simulated": ("simulated_s",)}, "seconds")
    return list(PLOTS)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_section(name: str, s: dict[str, Any]) -> str:
    sc, fleet, dist, fin = s["scenario"], s["fleet"], s["distribution"], s["final"]
    rounds = [
        [
            r["round"],
            r["holdout"].get(METRIC),
            r["baseline"].get(METRIC),
            r["asked"],
            r["participants"],
            r["unavailable"],
            r["dropped"],
            r["rejected"],
            r["byzantine_participants"],
            r["bytes_down"],
            r["bytes_up"],
            r["simulated_s"],
        ]
        for r in s["rounds"]
    ]
    facts = [
        ["strategy", sc["strategy"]["name"]],
        [
            "devices (Byzantine)",
            f"{fleet['devices']} ({fleet['byzantine_devices']}, attack {sc['byzantine']['attack']})",
        ],
        ["data", f"{sc['data']['dataset']}, {sc['partition']['kind']} partition, {fleet['examples']:,} device rows"],
        ["rounds × local epochs", f"{sc['rounds']} × {sc['local_epochs']}"],
        ["precision (bytes per exchange)", f"{sc['model']['precision']} ({s['model']['exchanged_bytes']:,} B)"],
        ["initial holdout AUPRC", s["initial"].get(METRIC)],
        [
            "final holdout AUPRC (centralized)",
            f"{_fmt(fin['holdout'].get(METRIC))} ({_fmt(fin['baseline'].get(METRIC))})",
        ],
        ["simulated training time", f"{fin['simulated_s']:,.1f} s"],
        ["bytes down / up", f"{fin['bytes_down']:,} / {fin['bytes_up']:,}"],
        [
            "release over MQTT",
            f"{dist['chunks']} chunk(s), {dist['fleet_bytes']:,} B to the fleet, "
            f"{dist['device_seconds_p50']:.2f} s median per device, {dist['fleet_seconds']:.1f} s to the whole fleet",
        ],
        ["seed", sc["seed"]],
    ]
    return (
        f"<h2>{html.escape(name)}</h2><p>{html.escape(sc.get('description', ''))}</p>"
        + _table(["", ""], facts)
        + "<h3>Rounds</h3>"
        + _table(
            [
                "round",
                "AUPRC",
                "centralized",
                "asked",
                "aggregated",
                "offline",
                "dropped",
                "rejected",
                "Byzantine in",
                "bytes down",
                "bytes up",
                "simulated s",
            ],
            rounds,
        )
    )


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "td:first-child{text-align:left}figure{display:inline-block;margin:.5em}img{max-width:34em}"
)


def write_report(runs: dict[str, dict[str, Any]], out: Path, title: str) -> Path:
    """Write plots, ``summary.json`` and ``index.html`` into ``out``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out)
    summary: dict[str, Any] = next(iter(runs.values())) if len(runs) == 1 else {"compare": runs}
    write_text_atomic(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n", out / SUMMARY_FILE)
    figures = "".join(
        f'<figure><img src="{p}" alt="{html.escape(PLOTS[p])}">'
        f"<figcaption>{html.escape(PLOTS[p])}</figcaption></figure>"
        for p in plots
    )
    sections = "".join(_run_section(name, s) for name, s in runs.items())
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{figures}{sections}"
        f"<p>Machine-readable: <a href='{SUMMARY_FILE}'>{SUMMARY_FILE}</a>. Wall times (keys starting with _) "
        "are measured; every other figure repeats under the scenario's seed.</p></body></html>\n"
    )
    return write_text_atomic(page, out / INDEX_FILE)
