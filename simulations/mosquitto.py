"""A private Mosquitto on a free loopback port, for tests, benchmarks and local experiments.

Its configuration lifts Mosquitto's queue and in-flight limits: a test or benchmark must
never lose a message silently to a broker default. It runs in its own session, so stopping
it stops its whole process group whatever happened to the caller.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import FedforgeError
from shared.net import free_port, wait_port


class MosquittoError(FedforgeError):
    """Mosquitto is not installed or did not start listening."""


def stop_process_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


@dataclass(frozen=True)
class PrivateMosquitto:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def executable() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise MosquittoError("mosquitto is not installed (.ci/run installs it)")
    return exe


def start(workdir: Path, name: str = "mosquitto") -> PrivateMosquitto:
    """Start one; the caller stops it with ``stop_process_group(broker.proc)``."""
    exe = executable()
    port = free_port()
    conf = workdir / f"{name}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\nlog_type error\nlog_dest stderr\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], start_new_session=True)
    if not wait_port(port):
        stop_process_group(proc)
        raise MosquittoError(f"mosquitto did not listen on {port}")
    return PrivateMosquitto(port, proc)


@contextlib.contextmanager
def private_mosquitto(workdir: Path, name: str = "mosquitto") -> Iterator[PrivateMosquitto]:
    broker = start(workdir, name)
    try:
        yield broker
    finally:
        stop_process_group(broker.proc)


class RestartableMosquitto:
    """A private Mosquitto that can be stopped and started again on the same port, keeping its
    sessions and in-flight messages (persistence on): for broker outages and restarts."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        # Started as root, mosquitto would switch to its own user, which cannot write into directory.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n{user}"
            f"persistence_location {directory}/\nmax_queued_messages 0\nlog_type error\nlog_dest stderr\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([executable(), "-c", str(self.conf)], start_new_session=True)
        if not wait_port(self.port):
            self.stop()
            raise MosquittoError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None
