"""The SuperNode launcher: Flower's SuperNode with an adaptive idle poll, on the pinned flwr only.

The swap touches flwr internals (``flwr.supernode.start_client_internal``), so besides the
policy itself it is checked on the installed flwr module and on a real SuperLink and
SuperNode: messages must flow through the patched loop, and a node idle past the window
must be back at Flower's 3 s poll.
"""

from __future__ import annotations

import importlib
import json
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
    UnsupportedFlowerError,
    patch_supernode,
    split_argv,
)
from tests.e2e.flower_nodes import online, superlink_and_node, wait_until
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


def test_the_agent_starts_the_launcher_unless_the_window_is_zero(tmp_path: Path) -> None:
    adaptive = AgentSettings(device_id="d", data_dir=tmp_path, superlink_address="127.0.0.1:9092")
    argv = supernode_argv(adaptive, port=9400)
    assert argv[:3] == [sys.executable, "-m", "edge_agent.federation.supernode_launcher"]
    assert argv[argv.index("--fast-poll") + 1] == str(adaptive.supernode_fast_poll_s)
    assert argv[argv.index("--fast-window") + 1] == str(adaptive.supernode_fast_window_s)
    launcher, flowers = split_argv(argv)
    assert launcher[3:] == ["--fast-poll", "0.2", "--fast-window", "30.0"]
    assert flowers[:2] == ["--insecure", "--superlink"]
    stock = adaptive.model_copy(update={"supernode_fast_window_s": 0.0})
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
