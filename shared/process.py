"""Supervision of long-running child daemons (flower-superlink, flower-supernode, brokers).

Flower's daemons start helpers of their own: the SuperLink starts ``flower-superexec`` in a
NEW session, and a SuperNode's superexec can outlive its parent by ~90 s. Killing one
process group therefore leaks processes. A supervisor here makes its process a child
subreaper (orphans are re-parented to it, not to PID 1), remembers every descendant of
each child it started, and on stop terminates all of them: SIGTERM, then SIGKILL.

An orphan re-parented to the supervisor is no longer below the daemon, and one that
appeared and lost its parent between two polls was never seen at all; so every child is
started with a per-supervisor environment tag (inherited by everything it starts) and the
processes carrying the tag belong to the tree too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
TAG_ENV = "FEDFORGE_SUPERVISED"


def reexec_module(module: str, argv: Sequence[str]) -> NoReturn:
    """This process again as a fresh ``python -m module argv``: what it imported (torch) is freed,
    and the PID is kept, so its supervisor sees no exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def become_subreaper() -> bool:
    """Linux only; elsewhere orphans go to init and only process groups are cleaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(root: int) -> set[int]:
    kids = _children_map()
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def tagged(tag: str) -> set[int]:
    """Processes (of this user) whose initial environment carries ``tag`` in ``TAG_ENV``.

    The variable holds the tags of all enclosing supervisors (``outer:inner``), so a
    supervisor nested in a supervised process (a server under the local fleet) still
    tags its helpers for the outer one.
    """
    prefix = f"{TAG_ENV}=".encode()
    wanted = tag.encode()
    me = os.getpid()
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(prefix) and wanted in var[len(prefix) :].split(b":"):
                out.add(int(entry))
                break
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# Children started by a ManagedProcess of this process: their own Popen reaps them.
_SUPERVISED: set[int] = set()
_SUPERVISED_LOCK = threading.Lock()


def reap_orphans() -> list[int]:
    """Reap zombies reparented to this process (it is a subreaper) that no Popen waits for.

    A helper spawned while its tree was being stopped, or one that outlived its parent and
    died later, ends up as our child; unreaped it stays a zombie for as long as we run.
    Call it only in a process whose other children are all supervised (the agent) or waited
    for by the calling thread (the benchmarks' fleet rig, between its steps).
    """
    me = os.getpid()
    with _SUPERVISED_LOCK:
        supervised = set(_SUPERVISED)
    reaped = []
    for pid in _children_map().get(me, []):
        if pid in supervised or _alive(pid):
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
    return reaped


def _reap(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def kill_tree(
    root_pids: Sequence[int], known: set[int] | None = None, grace: float = 5.0, *, tag: str | None = None
) -> set[int]:
    """Terminate the given processes, their groups, every descendant and every process
    carrying ``tag`` (see ``tagged``); returns survivors."""
    tracked = set(root_pids) | (known or set())
    own_group = os.getpgid(0)
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        if tag is not None:
            tracked |= tagged(tag)
        for pid in list(tracked):
            tracked |= descendants(pid)
        targets = {p for p in tracked if _alive(p)}
        groups: set[int] = set()
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                groups.add(os.getpgid(pid))
        groups.discard(own_group)
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(tracked)
            if not any(_alive(p) for p in tracked):
                _reap(tracked)  # those that died since the reap above are zombies of ours now
                return set()
            time.sleep(0.05)
    _reap(tracked)
    return {p for p in tracked if _alive(p)}


class ManagedProcess:
    """One supervised daemon: started in its own session, restarted with backoff if it dies."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        restart: bool = True,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self._tag = uuid.uuid4().hex
        outer = self.env.get(TAG_ENV)
        self.env[TAG_ENV] = f"{outer}:{self._tag}" if outer else self._tag
        self.log_path = log_path
        self.restart = restart
        self.max_backoff_s = max_backoff_s
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._known: set[int] = set()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        become_subreaper()
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._watcher.start()

    def _spawn(self) -> bool:
        """Start the child unless a stop has begun (the lock orders a restart against ``stop``)."""
        with self._lock:
            if self._stopping.is_set():
                return False
            out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
            try:
                self._proc = subprocess.Popen(
                    self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            finally:
                if self.log_path and not isinstance(out, int):
                    out.close()
        with _SUPERVISED_LOCK:
            _SUPERVISED.add(self._proc.pid)
        log.info("started %s (pid %d): %s", self.name, self._proc.pid, " ".join(self.argv))
        return True

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        with _SUPERVISED_LOCK:
            _SUPERVISED.discard(proc.pid)

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            # Remember helpers while they are still below the daemon, for a clean stop.
            while proc.poll() is None and not self._stopping.wait(0.5):
                self._known |= descendants(proc.pid)
            if self._stopping.is_set() or not self.restart:
                if proc.returncode is not None:
                    self._forget(proc)
                return
            if time.monotonic() - started > self.max_backoff_s:
                backoff = 1.0  # it ran fine for a while: this is a new failure, not a crash loop
            log.warning("%s exited with %s; restarting in %.0f s", self.name, proc.returncode, backoff)
            kill_tree([proc.pid], self._known, grace=2.0, tag=self._tag)
            self._forget(proc)
            self._known.clear()
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)
            if not self._spawn():
                return
            self.restarts += 1

    def stop(self, grace: float = 5.0) -> None:
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None:
            survivors = kill_tree([proc.pid], self._known, grace=grace, tag=self._tag)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
            if proc.returncode is not None:
                self._forget(proc)
            if survivors:
                log.error("%s: processes still alive after SIGKILL: %s", self.name, sorted(survivors))
        if self._watcher is not None:
            self._watcher.join(2)
        log.info("stopped %s", self.name)
