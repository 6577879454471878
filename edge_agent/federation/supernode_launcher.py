"""Flower's own ``flower-supernode``, with its fixed waits made adaptive: the agent's SuperNode.

A flwr 1.42 SuperNode pulls one message from the SuperLink; when there is none it sleeps a
hard-coded 3 s (``start_client_internal``). During a training run that sleep starts right
after the node sends its reply, while the server is still aggregating, so a node picks up
the next round up to 3 s after it is there: most of a round's overhead once the ClientApp
runs in a warm worker. Two more literals add latency: 0.5 s between looks for the
ClientApp's reply (``_push_messages``), and a 1 s first retry when the message's objects
are not yet on the SuperLink (``pull_objects``'s default backoff).

This launcher runs Flower's entry point unchanged after swapping, in that one module only,
the names those waits go through:

- the idle sleep becomes ``fast_poll_s`` for ``fast_window_s`` after the node last received
  or sent a message (a run is on: the next message comes right after aggregation), and
  Flower's 3 s again after that, so an idle fleet polls the SuperLink as gently as stock;
- the reply waits poll every ``fast_poll_s`` (they only run while a message is in flight);
- the object pull retries first after ``PULL_INITIAL_BACKOFF_S`` (Flower's doubling and cap
  are kept, so a missing object is given up on about as late as stock).

It also holds SIGINT and SIGTERM until Flower's own handlers are in place
(``DeferredSignals``): stock, a signal in the node's first second leaves it hanging.

The swap depends on flwr internals, so it is applied only to the exact flwr version it was
written against and checked on a real SuperLink (tests/edge_agent/federation/
test_supernode_launcher.py); on any other version the node logs an error and runs stock.

With ``--worker-runtime-api`` (the agent's default, ``clientapp_isolation = "in_node"``) the
launcher also runs the ClientApp worker (``edge_agent.federation.worker``) as a thread of
this process, taking its tasks from this node's own Runtime API. A second process would
hold a second interpreter and a second copy of flwr, grpc and numpy: ~110 MB of a round's
peak (benchmarks/README-round.md). Its idle exit (``--idle-exit``) cannot unload torch from
a live process, so it stops Flower's SuperNode gracefully (the node leaves the SuperLink)
and re-executes the launcher under the same PID, light again.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from shared.flower_env import PINNED_FLWR, flwr_is_pinned
from shared.process import reexec_module

log = logging.getLogger(__name__)

PATCHED_MODULE = "flwr.supernode.start_client_internal"
# The literals of that module's waits (flwr 1.42.0), recognised by value.
FLOWER_IDLE_SLEEP_S = 3.0
FLOWER_REPLY_WAIT_S = 0.5
PULL_INITIAL_BACKOFF_S = 0.02
_PATCHED_NAMES = ("time", "_pull_and_store_message", "_push_messages", "pull_objects")


@dataclass
class AdaptivePoll:
    """The SuperNode's waits: fast while messages flow, Flower's own once the node has been idle a while."""

    fast_poll_s: float
    fast_window_s: float
    idle_poll_s: float = FLOWER_IDLE_SLEEP_S
    clock: Callable[[], float] = time.monotonic
    _last_message: float = field(default=float("-inf"))
    _fast: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def message_seen(self) -> None:
        with self._lock:
            self._last_message = self.clock()

    def idle_interval(self) -> float:
        with self._lock:
            quiet = self.clock() - self._last_message
        fast = quiet < self.fast_window_s
        if fast != self._fast:  # one line per switch, not per poll
            self._fast = fast
            if fast:
                log.info("messages flowing: pulling every %.2f s", self.fast_poll_s)
            else:
                log.info("no message for %.0f s: pulling every %.0f s", self.fast_window_s, self.idle_poll_s)
        return self.fast_poll_s if fast else self.idle_poll_s

    def wait_interval(self, flower_s: float) -> float:
        """What to sleep where Flower sleeps ``flower_s``: only its two known literals change."""
        if flower_s == FLOWER_IDLE_SLEEP_S:
            return self.idle_interval()
        if flower_s == FLOWER_REPLY_WAIT_S:
            return min(self.fast_poll_s, flower_s)
        return flower_s


class _ModuleTime:
    """Stands in for ``time`` inside the patched module only: ``sleep`` adapts, the rest is ``time``."""

    def __init__(self, poll: AdaptivePoll) -> None:
        self._poll = poll

    def sleep(self, seconds: float) -> None:
        time.sleep(self._poll.wait_interval(seconds))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class UnsupportedFlowerError(RuntimeError):
    """The installed flwr is not the one the SuperNode patch was written and tested against."""


def _patch_target(what: str, names: Sequence[str], flwr_version: str | None, module: ModuleType | None) -> ModuleType:
    version = flwr_version or importlib.metadata.version("flwr")
    if not flwr_is_pinned(version):
        raise UnsupportedFlowerError(f"flwr {version} is installed; the {what} is written for flwr {PINNED_FLWR} only")
    target = module or importlib.import_module(PATCHED_MODULE)
    missing = [name for name in names if not hasattr(target, name)]
    if missing:
        raise UnsupportedFlowerError(f"{target.__name__} has no {', '.join(missing)}: not the flwr it was written for")
    return target


def patch_supernode(
    poll: AdaptivePoll, *, flwr_version: str | None = None, module: ModuleType | None = None
) -> Callable[[], None]:
    """Swap the SuperNode's waits for ``poll``'s; returns the undo. Raises ``UnsupportedFlowerError``."""
    target = _patch_target("SuperNode poll patch", _PATCHED_NAMES, flwr_version, module)
    saved = {name: getattr(target, name) for name in _PATCHED_NAMES}
    pull_and_store, push = saved["_pull_and_store_message"], saved["_push_messages"]

    @functools.wraps(pull_and_store)
    def pull_and_store_message(*args: Any, **kwargs: Any) -> Any:
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:
            poll.message_seen()
        return run_id

    @functools.wraps(push)
    def push_messages(*args: Any, **kwargs: Any) -> Any:
        try:
            return push(*args, **kwargs)
        finally:
            poll.message_seen()

    target.time = _ModuleTime(poll)  # type: ignore[attr-defined]
    target._pull_and_store_message = pull_and_store_message  # type: ignore[attr-defined]
    target._push_messages = push_messages  # type: ignore[attr-defined]
    target.pull_objects = functools.partial(saved["pull_objects"], initial_backoff=PULL_INITIAL_BACKOFF_S)  # type: ignore[attr-defined]

    def undo() -> None:
        for name, value in saved.items():
            setattr(target, name, value)

    return undo


class DeferredSignals:
    """SIGINT and SIGTERM held from the launcher's start until Flower's SuperNode handles them.

    Flower installs its graceful-exit handlers (leave the SuperLink, stop the Runtime API
    server) only in ``start_client_internal``, after its Runtime API server thread is running.
    A signal before that would unwind or kill the process with that non-daemon thread still
    up: the interpreter then waits for it forever, a node that neither works nor exits. Such
    signals come from the parent monitor (the agent died during the node's start), the agent
    stopping the node, or the in-node worker failing at once. Held here, each is raised again
    the moment Flower's handlers are in place, and takes Flower's graceful way out.

    Flower's handler puts back the one it replaced, this one, when it runs: a second signal
    while Flower is already stopping then ends the process at once, as it would stock (so an
    agent's stop during the in-node worker's reload is not followed by a re-execution).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.flower_handles = False

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: object) -> None:
        if not self.flower_handles:
            log.info("%s before the SuperNode's exit handlers are in place: held", signal.Signals(signum).name)
            if self.pending is None:
                self.pending = signum
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    def flower_handlers_installed(self) -> None:
        self.flower_handles = True
        log.info("SuperNode's exit handlers in place: SIGINT and SIGTERM leave the SuperLink gracefully")
        if self.pending is not None:
            log.info("raising the held %s for Flower's graceful exit", signal.Signals(self.pending).name)
            signal.raise_signal(self.pending)


def defer_signals_until_flower_handles_them(
    signals: DeferredSignals, *, flwr_version: str | None = None, module: ModuleType | None = None
) -> Callable[[], None]:
    """Install ``signals`` until the SuperNode registers its own handlers; returns the undo."""
    target = _patch_target("SuperNode signal deferral", ("register_signal_handlers",), flwr_version, module)
    register = target.register_signal_handlers

    @functools.wraps(register)
    def register_signal_handlers(*args: Any, **kwargs: Any) -> Any:
        result = register(*args, **kwargs)
        signals.flower_handlers_installed()  # a held signal is handled by Flower from here
        return result

    target.register_signal_handlers = register_signal_handlers  # type: ignore[attr-defined]
    signals.install()

    def undo() -> None:
        target.register_signal_handlers = register  # type: ignore[attr-defined]

    return undo


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The launcher's own options, and Flower's ``flower-supernode`` arguments after ``--``."""
    args = list(argv)
    if "--" not in args:
        return args, []
    split = args.index("--")
    return args[:split], args[split + 1 :]


class InNodeWorker:
    """The ClientApp worker as a thread of the SuperNode's process, and how it ends that process.

    Both ways out go through Flower's own SIGTERM handler, so the node always leaves the
    SuperLink the same way (``DeactivateNode``): the idle exit asks for a re-execution
    (``reload``), a worker that fails asks for an exit with an error, which the agent's
    supervisor restarts with its backoff (a re-execution would loop without one).
    """

    def __init__(self, runtime_api_address: str, idle_exit_s: float | None) -> None:
        from edge_agent.federation.worker import ClientAppWorker  # flwr's runtime client: only in this mode

        self.reload = threading.Event()
        self.failed = threading.Event()
        self.worker = ClientAppWorker(runtime_api_address, idle_exit_s=idle_exit_s, on_idle_exit=self._reload)
        self.thread = threading.Thread(target=self._run, name="clientapp-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to stop; a task still running is cut short by the process's exit."""
        self.worker.stop()
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            self.worker.run()
        except Exception:
            log.exception("the ClientApp worker failed: stopping the SuperNode")
            self.failed.set()
            os.kill(os.getpid(), signal.SIGTERM)

    def _reload(self) -> None:
        log.info("stopping the SuperNode to re-execute it without the loaded ClientApp")
        self.reload.set()
        os.kill(os.getpid(), signal.SIGTERM)  # Flower's handler runs in the main thread


def _log_to_stderr(*loggers: logging.Logger) -> None:
    # These modules' lines only: Flower's logger propagates, a root handler would print it twice.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> None:
    """Flower's SuperNode (``-- <flower-supernode args>``), patched unless window 0, with the worker if asked.

    ``[--fast-poll S] [--fast-window S] [--worker-runtime-api A [--idle-exit S]] [--parent-pid P]``
    """
    own_argv = list(sys.argv[1:] if argv is None else argv)
    mine, flowers = split_argv(own_argv)
    parser = argparse.ArgumentParser(prog="python -m edge_agent.federation.supernode_launcher")
    parser.add_argument("--fast-poll", type=float, default=0.2, help="seconds between pulls while messages flow")
    parser.add_argument("--fast-window", type=float, default=30.0, help="fast pulls after a message; 0: stock")
    parser.add_argument(
        "--worker-runtime-api", default=None, help="run the ClientApp worker in this process, on this host:port"
    )
    parser.add_argument("--idle-exit", type=float, default=None, help="re-execute light after this many idle s")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process is gone")
    own = parser.parse_args(mine)
    _log_to_stderr(log, logging.getLogger("edge_agent.federation.worker"))
    try:
        defer_signals_until_flower_handles_them(DeferredSignals())
    except UnsupportedFlowerError as exc:
        log.error("%s; a signal during the node's start may leave it hanging", exc)
    if own.fast_window > 0:
        try:
            patch_supernode(AdaptivePoll(own.fast_poll, own.fast_window))
            log.info(
                "SuperNode pulls every %.2f s for %.0f s after a message, then every %.0f s",
                own.fast_poll,
                own.fast_window,
                FLOWER_IDLE_SLEEP_S,
            )
        except UnsupportedFlowerError as exc:
            log.error("%s; running Flower's stock SuperNode (3 s idle poll, slower rounds)", exc)
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supernode.cli import flower_supernode

    if own.parent_pid is not None:
        start_parent_process_monitor(own.parent_pid)  # SIGINT: Flower's graceful exit
    worker: InNodeWorker | None = None
    try:
        if own.worker_runtime_api is not None:
            worker = InNodeWorker(own.worker_runtime_api, own.idle_exit)
            worker.start()
            log.info("ClientApp worker running in the SuperNode's process (Runtime API %s)", own.worker_runtime_api)
        sys.argv = ["flower-supernode", *flowers]
        flower_supernode()  # ends with SystemExit from Flower's exit handler
    finally:
        if worker is not None:
            worker.stop()
            if worker.reload.is_set():
                reexec_module("edge_agent.federation.supernode_launcher", own_argv)
            if worker.failed.is_set():
                raise SystemExit(1)


if __name__ == "__main__":
    main()
