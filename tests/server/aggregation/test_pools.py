"""The kernel's pools in a forked child: it starts its own, where the parent's would hang."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from server.aggregation.fedavg import fedavg

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def child_status() -> int:
    """Forks; the child aggregates on two threads with each loop, exits 0 if right."""
    updates = [[np.full(300_000, float(k), dtype=np.float32)] for k in range(3)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        signal.alarm(20)  # a hang ends the child with SIGALRM instead of the test run
        code = 0
        for compiled in (True, False):
            got = fedavg(updates, [1, 1, 2], workers=2, compiled=compiled).arrays[0]
            code |= 0 if np.allclose(got, 1.25) else 1
        os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def test_a_forked_child_aggregates_on_threads_of_its_own() -> None:
    updates = [[np.full(300_000, float(k), dtype=np.float32)] for k in range(3)]
    for compiled in (True, False):  # the parent's pool exists before the fork
        np.testing.assert_allclose(fedavg(updates, [1, 1, 2], workers=2, compiled=compiled).arrays[0], 1.25)
    assert child_status() == 0
