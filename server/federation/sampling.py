"""Sampling the SuperNodes of a round, with a bound on the wait for them.

flwr 1.42's ``FedAvg.configure_train`` / ``configure_evaluate`` sample through
``strategy_utils.sample_nodes``, which sleeps a second at a time, without limit, until
``min_available_nodes`` SuperNodes are connected. A run whose agents never join (on-demand
agents that never got the federation call because the broker was down, devices that are
off), or whose nodes go away between two rounds, would hang forever: its ServerApp never
ends, its federation call stands until it expires, its registry row says "running".

``BoundedFedAvg`` samples the same way but gives up after ``node_wait_s`` (the server's
``join_wait_s``) with ``TooFewAgentsError``, which names how many were connected of how
many were needed; the ServerApp records it as the run's failure. Replies are bounded
elsewhere: ``rounds.exchange`` and Flower's ``send_and_receive`` wait at most
``round_timeout_s``, and the SuperLink answers a message for a node gone offline with an
error reply, which the strategies drop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from server.errors import ServerError

log = logging.getLogger(__name__)

DEFAULT_NODE_WAIT_S = 30.0  # ServerSettings.join_wait_s's default: hosts without settings (the twin)


class TooFewAgentsError(ServerError):
    """Fewer SuperNodes than a round needs were connected when the wait for them ran out."""

    def __init__(self, connected: int, needed: int, waited_s: float, server_round: int = 1) -> None:
        self.connected, self.needed, self.waited_s, self.server_round = connected, needed, waited_s, server_round
        when = "joined" if server_round <= 1 else f"connected for round {server_round}"
        super().__init__(
            f"too few agents: {connected} of {needed} needed {when} within {waited_s:g} s (join_wait_s); "
            "the run needs min_agents SuperNodes"
        )


def connected_nodes(grid: Grid, minimum: int, timeout: float, poll_s: float = 0.5) -> list[int]:
    """The connected SuperNodes' ids, as soon as there are ``minimum``, or whatever is there after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < minimum and time.monotonic() < deadline:
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
    return nodes


def sample_within(
    grid: Grid, min_available: int, sample_size: int, timeout: float, server_round: int
) -> tuple[list[int], list[int]]:
    """``strategy_utils.sample_nodes`` with a bound: (sampled, connected), or ``TooFewAgentsError``."""
    needed = max(min_available, sample_size)
    nodes = connected_nodes(grid, needed, timeout)
    if len(nodes) < needed:
        raise TooFewAgentsError(len(nodes), needed, timeout, server_round)
    return random.sample(nodes, sample_size), nodes


class BoundedFedAvg(FedAvg):
    """FedAvg whose rounds wait at most ``node_wait_s`` for their SuperNodes (subclasses set it)."""

    node_wait_s: float = DEFAULT_NODE_WAIT_S

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._configure(server_round, arrays, config, grid, self.fraction_train, self.min_train_nodes, True)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._configure(
            server_round, arrays, config, grid, self.fraction_evaluate, self.min_evaluate_nodes, False
        )

    def _configure(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        fraction: float,
        min_nodes: int,
        train: bool,
    ) -> Iterable[Message]:
        """What Flower's FedAvg does in configure_train / configure_evaluate, with the bounded sampling."""
        if fraction == 0.0:
            return []
        sample_size = max(int(len(list(grid.get_node_ids())) * fraction), min_nodes)
        node_ids, connected = sample_within(grid, self.min_available_nodes, sample_size, self.node_wait_s, server_round)
        log.info(
            "configure_%s: sampled %d nodes (out of %d)",
            "train" if train else "evaluate",
            len(node_ids),
            len(connected),
        )
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN if train else MessageType.EVALUATE)
