"""Flower message helpers: train instructions and node replies built with the public Message API.

Outside a running ServerApp Flower has no task identity, and ``Message(...)`` refuses to
build an instruction; the fixture gives the test process the SuperLink's identity (as
Flower's own runtime does before it runs a ServerApp) and restores it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 4242
SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID


@pytest.fixture
def task_identity() -> Iterator[None]:
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = RUN_ID
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
