"""The round loop of the ServerApp: one exchange per round, replies pulled every 0.1 s.

Flower's ``Strategy.start`` sends each round's messages with ``Grid.send_and_receive``,
which sleeps a hard-coded 3 s between two pulls of the replies, and runs a second
(evaluate) exchange per round. Here the strategy still decides who trains on what
(``configure_train``) and how replies combine (``aggregate_train``), but the messages go
out with ``grid.push_messages`` and the replies are pulled every ``poll_s`` with
``grid.pull_messages`` (both public Grid API), and evaluation happens on the server's
holdout (``evaluate_fn``) instead of a second exchange. ``round_exchange = "flower"`` in the server
settings keeps Flower's own ``Strategy.start`` (train + evaluate exchanges, 3 s polls).

One more wait is Flower's: the SuperLink lists a reply as soon as its SuperNode has sent
it, before the node has pushed the reply's objects, and the Grid's ``pull_messages`` then
retries the object pull first after 1 s (flwr 1.42 ``http_grid``: ``pull_objects``'s
default backoff). ``exchange`` shortens that first retry, on the pinned flwr only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.federation.sampling import connected_nodes
from shared.flower_env import PINNED_FLWR, flwr_is_pinned

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class RoundsResult:
    """What ``Strategy.start`` returns, for the parts fedforge reads."""

    arrays: ArrayRecord = field(default_factory=ArrayRecord)
    train_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    round_seconds: dict[int, float] = field(default_factory=dict)


GRID_MODULE = "flwr.superlink.grid.http_grid"
REPLY_PULL_INITIAL_BACKOFF_S = 0.02


def quicken_reply_object_pulls(flwr_version: str | None = None) -> bool:
    """The ServerApp Grid's first retry of a reply's objects after 0.02 s, not 1 s; False: left stock.

    Measured (5 agents on loopback, 2026-11-29): one or two of each round's pulls waited the
    full 1 s. Flower's doubling and cap stay, so a reply whose objects never come is given
    up on about as late as stock.
    """
    version = flwr_version or importlib.metadata.version("flwr")
    if not flwr_is_pinned(version):
        log.error("flwr %s is not %s: reply object pulls keep Flower's 1 s first retry", version, PINNED_FLWR)
        return False
    names = vars(importlib.import_module(GRID_MODULE))
    if not isinstance(names["pull_objects"], functools.partial):
        names["pull_objects"] = functools.partial(names["pull_objects"], initial_backoff=REPLY_PULL_INITIAL_BACKOFF_S)
    return True


def exchange(grid: Grid, messages: Iterable[Message], *, timeout: float, poll_s: float = 0.1) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` passed."""
    quicken_reply_object_pulls()
    pending = {mid for mid in grid.push_messages(messages) if mid}
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(msg.metadata.reply_to_message_id for msg in got)
        if not pending:
            break
        if time.monotonic() >= deadline:
            log.warning("%d replies missing after %.0f s: the round goes on without them", len(pending), timeout)
            break
        time.sleep(poll_s)
    return replies


def wait_for_nodes(grid: Grid, expected: int, timeout: float, poll_s: float = 0.5) -> int:
    """Wait until ``expected`` SuperNodes are connected, at most ``timeout`` s; returns how many are.

    Flower's strategies wait only for their minimum; a run whose agents start their
    SuperNodes on demand would begin round 1 with the first ``min_agents`` to register.
    """
    count = len(connected_nodes(grid, expected, timeout, poll_s))
    if count < expected:
        log.warning("%d of %d expected SuperNodes connected after %.0f s", count, expected, timeout)
    else:
        log.info("%d SuperNodes connected (%d expected)", count, expected)
    return count


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    *,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    train_config: ConfigRecord,
    evaluate_fn: EvaluateFn | None,
    timeout: float,
    poll_s: float = 0.1,
) -> RoundsResult:
    """Synchronous rounds like ``Strategy.start`` with one train exchange per round."""
    result = RoundsResult()
    arrays = initial_arrays
    if evaluate_fn is not None and (metrics := evaluate_fn(0, arrays)) is not None:
        result.evaluate_metrics[0] = metrics
    for server_round in range(1, num_rounds + 1):
        started = time.monotonic()  # with the marks below: where a round's time goes, logged
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = exchange(grid, messages, timeout=timeout, poll_s=poll_s)
        exchanged = time.monotonic()
        aggregated, train_metrics = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = result.arrays = aggregated
        if train_metrics is not None:
            result.train_metrics[server_round] = train_metrics
        aggregated_at = time.monotonic()
        if evaluate_fn is not None and (metrics := evaluate_fn(server_round, arrays)) is not None:
            result.evaluate_metrics[server_round] = metrics
        ended = time.monotonic()
        seconds = result.round_seconds[server_round] = ended - started
        log.info(
            "round %d/%d: %d replies in %.2f s (exchange %.2f s, aggregation %.2f s, evaluation %.2f s)",
            server_round,
            num_rounds,
            len(replies),
            seconds,
            exchanged - started,
            aggregated_at - exchanged,
            ended - aggregated_at,
        )
    return result
