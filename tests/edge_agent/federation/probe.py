"""A probe Flower app for tests on real Flower: where each ClientApp message runs, and how.

Its ServerApp sends three query messages to every node, one exchange after the other (the
second asks the ClientApp to fail), and writes the replies to ``out`` as JSON: the PID each
message ran in and how many messages that ClientApp module had handled, or the error.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from server.config import ServerSettings
from server.federation.flower import CONNECTION, flwr_home
from shared.flower_env import flower_env, venv_executable


def app_pyproject(name: str, module: str) -> str:
    """The pyproject.toml of a one-module Flower test app (``module`` holds ``server`` and ``client``)."""
    return f"""\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
dependencies = ["flwr==1.42.0"]

[tool.flwr.app]
publisher = "fedforge-tests"

[tool.flwr.app.components]
serverapp = "{module}:server"
clientapp = "{module}:client"

[tool.flwr.app.config]
out = ""
"""


PROBE_APP = '''\
"""Probe: where does each ClientApp message run, and does the app stay loaded?"""

import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from server.federation.rounds import exchange

client = ClientApp()
server = ServerApp()
HANDLED = [0]


@client.query()
def query(msg, context):
    HANDLED[0] += 1
    if msg.content.config_records["config"]["fail"]:
        raise RuntimeError("probe failure on request")
    metrics = MetricRecord({"pid": os.getpid(), "handled": HANDLED[0]})
    return Message(RecordDict({"probe": metrics}), reply_to=msg)


@server.main()
def main(grid, context):
    nodes = []
    while not nodes:
        nodes = list(grid.get_node_ids())
        time.sleep(0.2)
    out = []
    for fail in (False, True, False):
        content = RecordDict({"config": ConfigRecord({"fail": fail})})
        messages = [Message(content, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
        for reply in exchange(grid, messages, timeout=120):
            failed = reply.has_error()
            out.append({"error": reply.error.reason} if failed else dict(reply.content.metric_records["probe"]))
    Path(str(context.run_config["out"])).write_text(json.dumps(out))
'''


def submit_app_run(server: ServerSettings, app_dir: Path, module: str, source: str, out: Path) -> None:
    """Write a one-module Flower app (``module``.py holding ``source``) into ``app_dir`` and submit
    one run of it to ``server``'s SuperLink, with ``out`` as its run config's ``out``."""
    app_dir.mkdir()
    (app_dir / "pyproject.toml").write_text(app_pyproject(f"{module.replace('_', '-')}", module))
    (app_dir / f"{module}.py").write_text(source)
    submitted = subprocess.run(
        [venv_executable("flwr"), "run", str(app_dir), CONNECTION, "--run-config", f"out='{out}'"],
        env=flower_env(flwr_home(server)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr


def submit_probe_run(server: ServerSettings, tmp_path: Path) -> Path:
    """Submit one probe run to ``server``'s SuperLink; returns where its replies will be written."""
    out = tmp_path / "replies.json"
    submit_app_run(server, tmp_path / "probe", "probe_app", PROBE_APP, out)
    return out
