"""Resident memory of process trees, sampled from /proc (Linux).

A Flower round starts and ends processes (``flwr-clientapp`` lives for one message), so
a tree's peak is only seen by sampling it often: every ``interval`` s one scan of /proc
reads each process's parent and RSS, and each watched tree is summed by role. RSS counts
pages shared between processes once per process, the same way for fedforge and its anchor.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

# Role of a process, from its command line. Order matters: the first match wins.
ROLES: tuple[tuple[str, str], ...] = (
    ("flower-supernode", "supernode"),
    ("edge_agent.federation.supernode_launcher", "supernode"),
    ("flower-superexec", "superexec"),
    ("flwr-clientapp", "clientapp"),
    ("edge_agent.federation.worker", "worker"),
    ("shared.cli agent", "agent"),
)
SUPERNODE_TREE = frozenset({"supernode", "superexec", "clientapp", "worker"})


def role_of(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    return next((role for needle, role in ROLES if needle in cmdline), "other")


def scan() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Children of every process and the RSS (bytes) of every process, in one pass."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            pages = int(Path(f"/proc/{entry}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * PAGE
    return children, rss


def tree(root: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class TreeMemory:
    """One tree at one instant: MB by role."""

    by_role: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.by_role.values())

    @property
    def supernode_tree(self) -> float:
        return sum(v for k, v in self.by_role.items() if k in SUPERNODE_TREE)


def measure(roots: Iterable[int], roles: dict[int, str] | None = None) -> dict[int, TreeMemory]:
    children, rss = scan()
    roles = roles if roles is not None else {}
    out: dict[int, TreeMemory] = {}
    for root in roots:
        by_role: dict[str, float] = {}
        for pid in tree(root, children):
            if pid not in rss:
                continue
            role = roles.get(pid) or roles.setdefault(pid, role_of(pid))
            by_role[role] = by_role.get(role, 0.0) + rss[pid] / MB
        out[root] = TreeMemory(by_role)
    return out


@dataclass
class Peaks:
    total: dict[int, float] = field(default_factory=dict)
    supernode_tree: dict[int, float] = field(default_factory=dict)
    agent: dict[int, float] = field(default_factory=dict)
    samples: int = 0


class TreeSampler:
    """Samples the trees below ``roots`` every ``interval`` s in a thread; keeps each one's peaks."""

    def __init__(self, roots: Callable[[], list[int]], interval: float = 0.05) -> None:
        self.roots = roots
        self.interval = interval
        self.peaks = Peaks()
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for root, mem in measure(self.roots(), self._roles).items():
                p = self.peaks
                p.total[root] = max(p.total.get(root, 0.0), mem.total)
                p.supernode_tree[root] = max(p.supernode_tree.get(root, 0.0), mem.supernode_tree)
                p.agent[root] = max(p.agent.get(root, 0.0), mem.by_role.get("agent", 0.0))
            self.peaks.samples += 1

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
