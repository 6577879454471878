"""A long-running ClientApp worker: executes every message of the SuperNode in one process.

Flower's default (``--isolation subprocess``) starts ``flower-superexec``, which starts a
new ``flwr-clientapp`` process for every message: interpreter, flwr, torch and the app are
loaded again each time (~2.5 s per message here, most of a round). With
``flower-supernode --isolation process`` the SuperNode starts nothing and waits for a
process to take its tasks from its Runtime API; this worker does that, and runs each
message in place with the ClientApp (and torch) kept loaded. By default it runs as a thread
of the SuperNode's own process (``supernode_launcher.InNodeWorker``); ``main`` below runs
it as a process of its own (``clientapp_isolation = "worker"``).

Memory: the worker starts light (flwr's runtime client only); the ClientApp, and torch
with it, is imported at the first message. After ``idle_exit_s`` without a message the
worker's process re-executes itself (same PID, so supervision is unchanged; in the
SuperNode's process, after the node has left the SuperLink) and idles light again.

flwr 1.42 has no public API for this: the task protocol (``AcquireTask``, token, pull the
task input, push the reply and the task output) is the one ``flower-superexec`` and
``flwr-clientapp`` speak, reused here from ``flwr.supernode.runtime.run_clientapp`` and
``flwr.supercore``. flwr is pinned exactly; tests/edge_agent/federation/test_worker.py runs
it against a real SuperNode.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullAppMessagesRequest, PullTaskInputRequest
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from shared.process import reexec_module

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


# The SuperNode hands out a task before it has fetched the message's objects from the
# SuperLink; Flower's pull then waits 1 s before its first retry. Retry sooner.
PULL_INITIAL_BACKOFF_S = 0.02
PULL_BACKOFF_CAP_S = 0.5


def pull_task_input(client: Any) -> tuple[Message, Context, Any, Any]:
    """``flwr.supernode.runtime.run_clientapp.pull_task_input`` with a short retry backoff."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed out a task without a message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    started = time.monotonic()
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=PULL_INITIAL_BACKOFF_S,
        backoff_cap=PULL_BACKOFF_CAP_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does: the id is not in the content
    log.debug("message objects pulled in %.3f s", time.monotonic() - started)
    return message, context, run, fab


def _client(address: str, *interceptors: Any) -> Any:
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the Runtime API listens on loopback only (supernode_argv)
        root_certificates=None,
        interceptors=list(interceptors),
        retry_invoker=make_simple_http_retry_invoker(),
    )


@dataclass
class ClientAppWorker:
    """Takes the SuperNode's ClientApp tasks one at a time and runs them in this process."""

    runtime_api_address: str
    # Polls are fast while a run is on (a round queues the next message within seconds) and
    # slow after ``busy_window_s`` without one: each poll is an HTTP request to the SuperNode.
    poll_s: float = 0.05
    idle_poll_s: float = 0.5
    busy_window_s: float = 30.0
    idle_exit_s: float | None = None
    on_idle_exit: Callable[[], None] | None = None
    executed: int = 0
    _apps: dict[str, ClientApp] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_tasks: int | None = None) -> None:
        poller = _client(self.runtime_api_address, RuntimeVersionHttpInterceptor(component_name="SuperExec"))
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        last_task = time.monotonic()
        try:
            while not self._stop.is_set():
                res = poller.AcquireTask(request)
                if res.HasField("task") and res.token:
                    self.execute(res.token)
                    last_task = time.monotonic()
                    if max_tasks is not None and self.executed >= max_tasks:
                        return
                    continue  # a round often queues the next message right behind
                idle = time.monotonic() - last_task
                if self._apps and self.idle_exit_s is not None and idle > self.idle_exit_s:
                    log.info("no message for %.0f s: dropping the loaded ClientApp", idle)
                    if self.on_idle_exit is not None:
                        self.on_idle_exit()
                    return
                self._stop.wait(self.poll_s if idle < self.busy_window_s else self.idle_poll_s)
        finally:
            poller.close()

    def execute(self, token: str) -> None:
        """One task, as ``flwr-clientapp`` runs it, minus the process start and the app load."""
        client = _client(
            self.runtime_api_address,
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message: Message | None = None
        context: Context | None = None
        reply: Message | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        marks = [time.monotonic()]
        heartbeat.start()
        try:
            message, context, run, fab = pull_task_input(client)
            marks.append(time.monotonic())
            app = self._app(run.fab_id, run.fab_version, fab)
            reply = app(message=message, context=context)
            marks.append(time.monotonic())
            status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # the task fails with a reason; the worker keeps serving
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            if isinstance(exc, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            reason = f"{type(exc)}:<'{exc}'>"
            log.exception("ClientApp raised")
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:
                log.exception("could not push the reply")
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()
            self.executed += 1
            marks.append(time.monotonic())
            names = ("pull", "run", "push")[: len(marks) - 1]
            steps = ", ".join(f"{n} {b - a:.3f} s" for n, a, b in zip(names, marks, marks[1:], strict=False))
            log.info("task %s: %s; RSS %.0f MB", "done" if status == SubStatus.COMPLETED else "failed", steps, rss_mb())

    def _app(self, fab_id: str, fab_version: str, fab: Any) -> ClientApp:
        app = self._apps.get(fab.hash_str)
        if app is None:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = load(fab_id, fab_version, fab.hash_str)
            self._apps[fab.hash_str] = app
            log.info("loaded ClientApp %s %s (%s)", fab_id, fab_version, fab.hash_str[:12])
        return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.federation.worker")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between task polls during a run")
    parser.add_argument("--idle-poll", type=float, default=0.5, help="seconds between task polls between runs")
    parser.add_argument("--idle-exit", type=float, default=None, help="drop the loaded app after this many idle s")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per task poll otherwise
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    worker = ClientAppWorker(
        args.runtime_api_address, poll_s=args.poll, idle_poll_s=args.idle_poll, idle_exit_s=args.idle_exit
    )

    def _terminate(signum: int, _frame: object) -> None:
        worker.stop()
        # Once the interpreter is exiting (threading has shut down the main thread before the
        # atexit hooks run), there is nothing left to cut short: raising would only print a
        # traceback from whichever exit hook the signal interrupted.
        if threading.main_thread().is_alive():
            raise SystemExit(0)  # a task cut short is failed by the SuperNode, as for flwr-clientapp

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)

    worker.on_idle_exit = lambda: reexec_module("edge_agent.federation.worker", sys.argv[1:])
    worker.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
