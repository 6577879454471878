"""The SuperNode launcher: Flower's SuperNode with an adaptive idle poll, on the pinned flwr only.

The swap touches flwr internals (``flwr.supernode.start_client_internal``), so besides the
policy itself it is checked on the installed flwr module and on a real SuperLink and
SuperNode: messages must flow through the patched loop, and a node idle past the window
must be back at Flower's 3 s poll.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.federation.supernode import supernode_argv
from edge_agent.federation.supernode_launcher import (
    FLOWER_IDLE_SLEEP_S,
    PATCHED_MODULE,
    PULL_INITIAL_BACKOFF_S,
    AdaptivePoll,
    DeferredSignals,
    UnsupportedFlowerError,
    defer_signals_until_flower_handles_them,
    patch_supernode,
    split_argv,
)
from shared.flower_env import flower_env
from shared.net import free_port
from tests.e2e.flower_nodes import listed_nodes, online, superlink_and_node, wait_until
from tests.e2e.procs import processes_mentioning
from tests.edge_agent.federation.probe import submit_probe_run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_poll_is_fast_for_the_window_after_a_message_then_flowers_again() -> None:
    clock = Clock()
    poll = AdaptivePoll(fast_poll_s=0.1, fast_window_s=30.0, clock=clock)
    assert poll.idle_interval() == FLOWER_IDLE_SLEEP_S  # a node that has seen nothing polls as stock
    poll.message_seen()
    clock.now += 29.0
    assert poll.idle_interval() == 0.1
    clock.now += 2.0
    assert poll.idle_interval() == FLOWER_IDLE_SLEEP_S
    poll.message_seen()
    assert poll.idle_interval() == 0.1


def test_only_flowers_two_literals_change() -> None:
    poll = AdaptivePoll(fast_poll_s=0.2, fast_window_s=30.0, clock=Clock())
    assert poll.wait_interval(0.5) == 0.2  # the reply waits: only while a message is in flight
    assert poll.wait_interval(3) == FLOWER_IDLE_SLEEP_S
    assert poll.wait_interval(1.7) == 1.7
    assert AdaptivePoll(fast_poll_s=2.0, fast_window_s=30.0).wait_interval(0.5) == 0.5  # never slower than Flower


def test_patch_swaps_the_supernode_waits_and_undoes_them() -> None:
    module = importlib.import_module(PATCHED_MODULE)
    before = {name: getattr(module, name) for name in ("time", "_pull_and_store_message", "_push_messages")}
    original_pull = module.pull_objects
    undo = patch_supernode(AdaptivePoll(fast_poll_s=0.1, fast_window_s=30.0))
    try:
        assert module.time is not time
        assert module.time.monotonic is time.monotonic
        assert module.pull_objects.keywords == {"initial_backoff": PULL_INITIAL_BACKOFF_S}
        assert module._pull_and_store_message.__wrapped__ is before["_pull_and_store_message"]
        assert module._push_messages.__wrapped__ is before["_push_messages"]
    finally:
        undo()
    assert {name: getattr(module, name) for name in before} == before
    assert module.pull_objects is original_pull


def test_another_flwr_version_is_refused_and_left_stock() -> None:
    module = importlib.import_module(PATCHED_MODULE)
    with pytest.raises(UnsupportedFlowerError, match=r"flwr 1\.43\.0 is installed"):
        patch_supernode(AdaptivePoll(0.1, 30.0), flwr_version="1.43.0")
    assert module.time is time
    with pytest.raises(UnsupportedFlowerError, match="has no time, _pull_and_store_message"):
        patch_supernode(AdaptivePoll(0.1, 30.0), module=types.ModuleType("flwr.supernode.elsewhere"))


def test_signals_before_flowers_handlers_are_held_then_raised_into_them() -> None:
    received: list[int] = []
    flower = types.ModuleType("flwr.supernode.start_client_internal")

    def register_signal_handlers(**_: object) -> None:  # as Flower's: its handler replaces the one there
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: received.append(signum))

    flower.register_signal_handlers = register_signal_handlers  # type: ignore[attr-defined]
    saved = {signum: signal.getsignal(signum) for signum in DeferredSignals.SIGNALS}
    try:
        held = DeferredSignals()
        undo = defer_signals_until_flower_handles_them(held, module=flower)
        signal.raise_signal(signal.SIGINT)  # the parent monitor, during the node's start
        signal.raise_signal(signal.SIGTERM)
        assert received == []
        assert held.pending == signal.SIGINT
        flower.register_signal_handlers()
        assert received == [signal.SIGINT]  # one graceful exit: Flower's handler runs once
        undo()
        assert flower.register_signal_handlers is register_signal_handlers
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


SECOND_SIGNAL = """
import signal, sys, time, types
from edge_agent.federation.supernode_launcher import DeferredSignals, defer_signals_until_flower_handles_them

flower = types.ModuleType("flwr.supernode.start_client_internal")

def register_signal_handlers():  # as Flower's: its handler puts back the one it replaced, then exits slowly
    replaced = signal.getsignal(signal.SIGTERM)
    def graceful(signum, frame):
        signal.signal(signal.SIGTERM, replaced)
        print("stopping", flush=True)
        time.sleep(20)
        sys.exit(0)  # where the launcher would go on to re-execute the node
    signal.signal(signal.SIGTERM, graceful)

flower.register_signal_handlers = register_signal_handlers
defer_signals_until_flower_handles_them(DeferredSignals(), module=flower)
flower.register_signal_handlers()
print("ready", flush=True)
time.sleep(60)
"""


def test_a_second_signal_while_flower_stops_ends_the_process_at_once() -> None:
    # The agent's stop during a reload's graceful exit must end the node, not see it re-executed.
    proc = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "stopping"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_agent_starts_the_launcher_unless_told_to_start_flowers_supernode(tmp_path: Path) -> None:
    adaptive = AgentSettings(device_id="d", data_dir=tmp_path, superlink_address="127.0.0.1:9092")
    argv = supernode_argv(adaptive, port=9400)
    assert argv[:3] == [sys.executable, "-m", "edge_agent.federation.supernode_launcher"]
    assert argv[argv.index("--fast-poll") + 1] == str(adaptive.supernode_fast_poll_s)
    assert argv[argv.index("--fast-window") + 1] == str(adaptive.supernode_fast_window_s)
    launcher, flowers = split_argv(argv)
    assert launcher[3:7] == ["--fast-poll", "0.2", "--fast-window", "30.0"]
    assert flowers[:2] == ["--insecure", "--superlink"]
    # Flower's waits alone still go through the launcher (parent monitor, held signals).
    waits = adaptive.model_copy(update={"supernode_fast_window_s": 0.0, "clientapp_isolation": "worker"})
    assert supernode_argv(waits, port=9400)[:3] == argv[:3]
    stock = waits.model_copy(update={"supernode_entry": "flower"})
    assert Path(supernode_argv(stock, port=9400)[0]).name == "flower-supernode"


@pytest.mark.integration
@pytest.mark.slow
def test_a_real_supernode_polls_fast_while_messages_flow_then_as_flower_when_idle(tmp_path: Path) -> None:
    log = tmp_path / "agent" / "supernode.log"
    with superlink_and_node(tmp_path, device_id="poll", supernode_fast_poll_s=0.1, supernode_fast_window_s=5.0) as (
        server,
        companion,
    ):
        out = submit_probe_run(server, tmp_path)
        assert wait_until(out.exists, 180), log.read_text()[-3000:]
        replies = json.loads(out.read_text())
        assert [("error" in r) for r in replies] == [False, True, False]

        # The window closes 5 s after the last reply: the node is back at Flower's poll.
        idle_line = "no message for 5 s: pulling every 3 s"
        assert wait_until(lambda: idle_line in log.read_text(), 60), log.read_text()[-3000:]
        text = log.read_text()
        assert "SuperNode pulls every 0.10 s for 5 s after a message" in text
        assert text.index("messages flowing: pulling every 0.10 s") < text.index(idle_line)
        assert "running Flower's stock SuperNode" not in text
        assert companion.process.running()
        assert companion.process.restarts == 0
        assert len(online(server)) == 1
    time.sleep(0.5)
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.integration
@pytest.mark.slow
def test_the_in_node_worker_runs_every_message_in_the_supernode_and_restarts_it_light(tmp_path: Path) -> None:
    log = tmp_path / "agent" / "supernode.log"
    started_line = "ClientApp worker running in the SuperNode's process"
    # The idle exit is longer than the SuperNode's 3 s poll between two messages.
    with superlink_and_node(tmp_path, device_id="in-node", worker_idle_exit_s=8.0) as (server, companion):
        assert companion.worker is None
        node_pid = companion.process.pid
        (first_node,) = online(server)

        out = submit_probe_run(server, tmp_path)
        assert wait_until(out.exists, 180), log.read_text()[-3000:]
        first, failed, third = json.loads(out.read_text())
        # Every message ran in the SuperNode's own process, the app loaded once, and a
        # failing message came back as an error without taking the node down.
        assert first == {"pid": node_pid, "handled": 1}
        assert "probe failure on request" in failed["error"]
        assert third == {"pid": node_pid, "handled": 3}

        # Idle: the node leaves the SuperLink and re-executes itself under the same PID.
        assert wait_until(lambda: log.read_text().count(started_line) == 2, 60), log.read_text()[-3000:]
        assert wait_until(lambda: len(online(server) - {first_node}) == 1, 60), log.read_text()[-3000:]
        # It left (DeactivateNode) rather than being timed out after two missed heartbeats.
        assert listed_nodes(server)[first_node]["status"] != "online"
        assert companion.process.pid == node_pid
        assert companion.process.running()
        assert companion.process.restarts == 0

        # A fresh interpreter: the next run loads the app anew, in the same process.
        (tmp_path / "second").mkdir()
        out = submit_probe_run(server, tmp_path / "second")
        assert wait_until(out.exists, 180), log.read_text()[-3000:]
        assert json.loads(out.read_text())[0] == {"pid": node_pid, "handled": 1}
    time.sleep(0.5)
    assert processes_mentioning(str(tmp_path)) == []


FAILING_WORKER = """
import signal, sys, time
from edge_agent.federation import supernode_launcher, worker

def run(self, max_tasks=None):
    if WAIT_FOR_FLOWER:
        while "flwr" not in getattr(signal.getsignal(signal.SIGTERM), "__module__", ""):
            time.sleep(0.05)
    raise RuntimeError("injected worker failure")

worker.ClientAppWorker.run = run
supernode_launcher.main(sys.argv[1:])
"""


def unconnected_node_argv(*own: str) -> list[str]:
    """Launcher arguments for an in-node SuperNode whose SuperLink never answers (it retries)."""
    runtime_port, link_port = free_port(), free_port()
    argv = ["--fast-window", "0", "--worker-runtime-api", f"127.0.0.1:{runtime_port}", *own, "--"]
    argv += ["--insecure", "--superlink", f"127.0.0.1:{link_port}", "--isolation", "process"]
    return [*argv, "--host", "127.0.0.1", "--port", str(runtime_port)]


@pytest.mark.integration
@pytest.mark.parametrize("wait_for_flower", [True, False], ids=["after-flower-started", "at-once"])
def test_a_failing_in_node_worker_stops_the_supernode_with_an_error(tmp_path: Path, wait_for_flower: bool) -> None:
    # Not restarted in place: the exit lets the agent's supervisor restart it with backoff.
    # At once: the failure comes before Flower has installed its SIGTERM handler.
    script = f"WAIT_FOR_FLOWER = {wait_for_flower}\n{FAILING_WORKER}"
    proc = subprocess.run(
        [sys.executable, "-c", script, *unconnected_node_argv()],
        env=flower_env(tmp_path / "flwr"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "the ClientApp worker failed: stopping the SuperNode" in proc.stderr
    assert "injected worker failure" in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("when", ["while-it-runs", "as-it-starts"])
def test_an_in_node_supernode_stops_when_its_agent_is_gone(tmp_path: Path, when: str) -> None:
    # The agent stands in as a process the test can end; the node is not its child. Gone as
    # the node starts, the parent monitor's signal usually comes before Flower's handlers are
    # in place, with its Runtime API thread already up: the node must still leave, not hang.
    agent = subprocess.Popen(["sleep", "600"])
    if when == "as-it-starts":
        agent.kill()
        agent.wait()
    log = tmp_path / "supernode.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_agent.federation.supernode_launcher",
                *unconnected_node_argv("--parent-pid", str(agent.pid)),
            ],
            env=flower_env(tmp_path / "flwr"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if when == "while-it-runs":
            assert wait_until(lambda: "exit handlers in place" in log.read_text(), 60), log.read_text()[-3000:]
            assert node.poll() is None
            agent.kill()
            agent.wait()
        assert node.wait(timeout=30) == 0, log.read_text()[-3000:]  # Flower's graceful exit
        assert "SuperNode terminated gracefully" in log.read_text()
    finally:
        for proc in (agent, node):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.integration
@pytest.mark.parametrize("isolation", ["worker", "subprocess"])
def test_a_supernode_in_any_isolation_mode_stops_when_its_agent_is_gone(tmp_path: Path, isolation: str) -> None:
    # The node's arguments are the agent's own, with a stand-in agent the test can end. In
    # "subprocess" mode Flower's SuperExec child watches the node and must go with it.
    agent = subprocess.Popen(["sleep", "600"])
    settings = AgentSettings(
        device_id="orphan",
        data_dir=tmp_path / "agent",
        superlink_address=f"127.0.0.1:{free_port()}",  # never answers: the node retries
        clientapp_isolation=isolation,
    )
    argv = supernode_argv(settings, port=free_port())
    argv[argv.index("--parent-pid") + 1] = str(agent.pid)
    log = tmp_path / "supernode.log"
    with log.open("wb") as out:
        node = subprocess.Popen(argv, env=flower_env(tmp_path / "flwr"), stdout=out, stderr=subprocess.STDOUT)
    superexec = f"--parent-pid {node.pid}"
    try:
        assert wait_until(lambda: "exit handlers in place" in log.read_text(), 60), log.read_text()[-3000:]
        if isolation == "subprocess":
            assert wait_until(lambda: processes_mentioning(superexec) != [], 30), log.read_text()[-3000:]
        assert node.poll() is None
        agent.kill()
        agent.wait()
        assert node.wait(timeout=30) == 0, log.read_text()[-3000:]  # Flower's graceful exit
        assert "SuperNode terminated gracefully" in log.read_text()
        assert wait_until(lambda: processes_mentioning(superexec) == [], 30), processes_mentioning(superexec)
    finally:
        for proc in (agent, node):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for line in processes_mentioning(superexec):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
