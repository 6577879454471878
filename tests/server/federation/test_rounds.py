"""The ServerApp's reply pulls: Flower's 1 s first object-pull retry shortened, on the pinned flwr only.

The real ServerApp runs through it in the worker and launcher tests (their probe app uses
``exchange`` on a real SuperLink); here, what it changes in the installed flwr module.
"""

from __future__ import annotations

import functools
import importlib

import pytest

from server.federation.rounds import GRID_MODULE, REPLY_PULL_INITIAL_BACKOFF_S, quicken_reply_object_pulls


def test_the_grid_retries_a_replys_objects_sooner_and_only_once_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = importlib.import_module(GRID_MODULE)
    stock = grid.pull_objects
    monkeypatch.setattr(grid, "pull_objects", stock)  # restored after the test
    assert quicken_reply_object_pulls()
    assert quicken_reply_object_pulls()  # idempotent: every exchange calls it
    assert isinstance(grid.pull_objects, functools.partial)
    assert grid.pull_objects.func is stock
    assert grid.pull_objects.keywords == {"initial_backoff": REPLY_PULL_INITIAL_BACKOFF_S}


def test_another_flwr_keeps_flowers_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = importlib.import_module(GRID_MODULE)
    stock = grid.pull_objects
    monkeypatch.setattr(grid, "pull_objects", stock)
    assert not quicken_reply_object_pulls("1.43.0")
    assert grid.pull_objects is stock
