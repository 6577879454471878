"""The paho-thread -> loop hand-off: order, batching, backpressure, and release on close."""

from __future__ import annotations

import asyncio
import threading

from edge_agent.handoff import Handoff


def test_items_from_another_thread_arrive_in_order() -> None:
    async def main() -> list[int]:
        handoff: Handoff[int] = Handoff(limit=50)
        handoff.open(asyncio.get_running_loop())
        producer = threading.Thread(target=lambda: [handoff.put(i) for i in range(5000)])
        producer.start()
        got: list[int] = []
        while len(got) < 5000:
            batch = await handoff.get(64)
            assert 1 <= len(batch) <= 64
            got += batch
        producer.join()
        return got

    assert asyncio.run(main()) == list(range(5000))


def test_full_handoff_blocks_the_producer_until_taken() -> None:
    async def main() -> None:
        handoff: Handoff[int] = Handoff(limit=3)
        handoff.open(asyncio.get_running_loop())
        done = threading.Event()

        def produce() -> None:
            for i in range(4):
                assert handoff.put(i)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        assert not await asyncio.to_thread(done.wait, 0.3)  # the fourth put waits for room
        assert len(handoff) == 3
        assert handoff.take(2) == [0, 1]
        assert await asyncio.to_thread(done.wait, 5)
        producer.join()
        assert handoff.take() == [2, 3]

    asyncio.run(main())


def test_close_releases_a_blocked_producer() -> None:
    async def main() -> None:
        handoff: Handoff[int] = Handoff(limit=1)
        handoff.open(asyncio.get_running_loop())
        assert handoff.put(0)
        results: list[bool] = []
        producer = threading.Thread(target=lambda: results.append(handoff.put(1)))
        producer.start()
        await asyncio.sleep(0.1)
        handoff.close()
        await asyncio.to_thread(producer.join, 5)
        assert results == [False]
        assert handoff.take() == [0]
        assert not handoff.put(2)  # closed: nothing more is queued

    asyncio.run(main())
