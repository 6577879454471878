"""ManagedProcess and kill_tree against real process trees: no process of a tree survives a stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.process import ManagedProcess, become_subreaper, descendants, kill_tree, reap_orphans

# The child starts a grandchild in a NEW session (as the SuperLink starts flower-superexec),
# records both pids, then sleeps, or exits at once with "exit" (leaving an orphan behind).
CHILD = """
import os, subprocess, sys, time
out, mode = sys.argv[1], sys.argv[2]
grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
with open(out + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()} {grand.pid}")
os.replace(out + ".tmp", out)
if mode == "sleep":
    time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Alive = exists in /proc and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def read_pids(path: Path) -> tuple[int, int]:
    wait_for(path.exists)
    child, grand = path.read_text().split()
    return int(child), int(grand)


def child_argv(out: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", CHILD, str(out), mode]


def ours(pid: int) -> bool:
    """Still one of this file's sleepers (not a process that reused the pid)."""
    try:
        return b"time.sleep(120)" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test if still alive, so a failing test leaks nothing."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid) and ours(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def test_stop_kills_child_and_new_session_grandchild(tmp_path: Path, cleanup: list[int]) -> None:
    out = tmp_path / "pids"
    proc = ManagedProcess("tree", child_argv(out, "sleep"), log_path=tmp_path / "tree.log")
    proc.start()
    try:
        child, grand = read_pids(out)
        cleanup += [child, grand]
        assert proc.pid == child
        assert proc.running()
        assert grand in descendants(child)
        assert os.getsid(grand) != os.getsid(child)  # really another session
    finally:
        proc.stop(grace=2.0)
    assert not alive(child)
    assert not alive(grand)
    assert not proc.running()


def test_stop_kills_an_orphan_reparented_to_the_supervisor(tmp_path: Path, cleanup: list[int]) -> None:
    """The child exits at once; its grandchild is re-parented (subreaper) and still belongs to the tree."""
    out = tmp_path / "pids"
    proc = ManagedProcess("orphaning", child_argv(out, "exit"), restart=False)
    proc.start()
    try:
        child, grand = read_pids(out)
        cleanup += [child, grand]
        wait_for(lambda: not proc.running())
        assert alive(grand)
    finally:
        proc.stop(grace=2.0)
    assert not alive(grand)
    assert proc.restarts == 0


def test_a_child_that_exits_is_restarted_with_a_new_pid(tmp_path: Path, cleanup: list[int]) -> None:
    marker = tmp_path / "starts"
    script = f"open({str(marker)!r}, 'a').write('x'); import sys; sys.exit(3)"
    proc = ManagedProcess("flappy", [sys.executable, "-c", script], max_backoff_s=1.0)
    proc.start()
    try:
        first = proc.pid
        assert first is not None
        cleanup.append(first)
        wait_for(lambda: proc.restarts >= 1 and proc.pid != first)
        second = proc.pid
        assert second is not None
        cleanup.append(second)
        wait_for(lambda: marker.exists() and len(marker.read_text()) >= 2)
    finally:
        proc.stop(grace=1.0)
    assert proc.restarts >= 1
    assert second != first
    restarts = proc.restarts
    time.sleep(1.5)  # longer than the backoff: a stopped supervisor starts nothing new
    assert proc.restarts == restarts


def test_restart_kills_the_leftovers_of_the_dead_child(tmp_path: Path, cleanup: list[int]) -> None:
    """Before a restart, what the dead daemon left behind is stopped (no duplicate helpers)."""
    out = tmp_path / "pids"
    proc = ManagedProcess("leaky", child_argv(out, "exit"), max_backoff_s=1.0)
    proc.start()
    try:
        child, grand = read_pids(out)
        cleanup += [child, grand]
        wait_for(lambda: proc.restarts >= 1)
        wait_for(lambda: not alive(grand))
    finally:
        proc.stop(grace=1.0)


def test_restart_false_leaves_a_dead_child_dead(tmp_path: Path) -> None:
    proc = ManagedProcess("once", [sys.executable, "-c", "pass"], restart=False)
    proc.start()
    try:
        first = proc.pid
        wait_for(lambda: not proc.running())
        time.sleep(1.5)  # longer than the first backoff
        assert proc.restarts == 0
        assert proc.pid == first
        assert not proc.running()
    finally:
        proc.stop(grace=1.0)


def test_child_output_goes_to_the_log_file(tmp_path: Path) -> None:
    log_path = tmp_path / "child.log"
    proc = ManagedProcess(
        "talker", [sys.executable, "-c", "print('hello from child', flush=True)"], restart=False, log_path=log_path
    )
    proc.start()
    try:
        wait_for(lambda: log_path.exists() and "hello from child" in log_path.read_text())
    finally:
        proc.stop(grace=1.0)


def test_kill_tree_escalates_to_sigkill(tmp_path: Path) -> None:
    """A process that ignores SIGTERM still ends, after the grace period, with its descendants."""
    ready = tmp_path / "ready"
    script = (
        "import signal, subprocess, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'], start_new_session=True)\n"
        f"pathlib.Path({str(ready)!r}).write_text(str(g.pid))\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        wait_for(lambda: ready.exists() and ready.read_text() != "")
        grand = int(ready.read_text())
        survivors = kill_tree([child.pid], grace=0.5)
        assert survivors == set()
        child.wait(5)
        assert not alive(child.pid)
        assert not alive(grand)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(5)


def test_kill_tree_of_a_dead_pid_is_harmless() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert kill_tree([proc.pid], grace=0.1) == set()
    assert os.getpid() > 0  # we are still here: our own group was not signalled


def test_descendants_of_a_leaf_is_empty() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert descendants(proc.pid) == set()
        assert proc.pid in descendants(os.getpid())
    finally:
        proc.kill()
        proc.wait(5)


def test_every_process_of_a_supervised_tree_carries_the_tag(tmp_path: Path, cleanup: list[int]) -> None:
    """Also under a supervisor nested in a supervised process: both tags are inherited."""
    from shared.process import TAG_ENV, tagged

    out = tmp_path / "pids"
    env = dict(os.environ, **{TAG_ENV: "outer0"})
    proc = ManagedProcess("tagged", child_argv(out, "sleep"), env=env)
    proc.start()
    try:
        child, grand = read_pids(out)
        cleanup += [child, grand]
        assert {child, grand} <= tagged("outer0")
        assert {child, grand} <= tagged(proc.env[TAG_ENV].split(":")[-1])
        assert os.getpid() not in tagged("outer0")
    finally:
        proc.stop(grace=2.0)
    assert tagged("outer0") == set()


def test_a_helper_that_dies_after_its_parent_is_reaped_and_supervised_children_are_not(tmp_path: Path) -> None:
    become_subreaper()
    daemon = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], restart=False)
    daemon.start()
    try:
        pid_file = tmp_path / "pid"
        leave_helper = (
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.3)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        )
        subprocess.run([sys.executable, "-c", leave_helper], check=True, timeout=30)
        orphan = int(pid_file.read_text())

        def zombie_of_ours() -> bool:
            fields = Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()
            return fields[0] == "Z" and int(fields[1]) == os.getpid()

        deadline = time.monotonic() + 10
        while not zombie_of_ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zombie_of_ours()
        assert orphan in reap_orphans()
        assert not Path(f"/proc/{orphan}").exists()
        assert daemon.running()  # its own Popen keeps waiting for it
        assert daemon.pid not in reap_orphans()
    finally:
        daemon.stop()
