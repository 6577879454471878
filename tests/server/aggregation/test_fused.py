"""The fused kernel's pool: torch on one intra-op thread per pool thread, nobody else's count touched."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from server.aggregation.fused import fused_pool  # noqa: E402


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def threads_seen_by_a_new_thread() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


@pytest.mark.usefixtures("two_torch_threads")
def test_pool_threads_run_torch_on_one_intra_op_thread_and_leave_the_others_alone() -> None:
    pool = fused_pool(3)  # a size no other test asks for: this test makes the pool
    assert list(pool.map(lambda _: torch.get_num_threads(), range(9))) == [1] * 9
    assert torch.get_num_threads() == 2
    assert threads_seen_by_a_new_thread() == 2
    assert fused_pool(3) is pool


@pytest.mark.usefixtures("two_torch_threads")
def test_a_pool_whose_threads_cannot_start_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.aggregation import fused
    from server.errors import AggregationError

    def broken() -> None:
        raise OSError("no thread for you")

    monkeypatch.setattr(fused, "_one_thread", broken)
    monkeypatch.setattr(fused, "POOL_START_S", 0.5)
    with pytest.raises(AggregationError, match="could not start the FedAvg pool of 5 threads"):
        fused_pool(5)
    assert torch.get_num_threads() == 2
    monkeypatch.undo()
    assert list(fused_pool(5).map(lambda _: torch.get_num_threads(), range(5))) == [1] * 5  # a later call starts one
