"""The ingress's keypoint parsing (``KeypointParsing``): large bodies take turns, small
ones never wait behind them, a cancelled request keeps its turn until its thread ends.
No Ray: a stand-in parse that blocks until released shows who runs when."""

import asyncio
import threading

import pytest

from dvamn.serving.keypoint_json import KeypointParsing
from dvamn.serving.queries import QueryLimits

LARGE = b"L" * 11  # over the test's large_bytes of 10
SMALL = b"S"


class BlockingParse:
    """Counts the large parses running at once; each blocks until ``release`` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = self.most = self.started = 0

    def __call__(self, body: bytes, limits: QueryLimits):
        if body == SMALL:
            return "small"
        with self.lock:
            self.started += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.release.wait(10), "never released"
        finally:
            with self.lock:
                self.running -= 1
        return "large"


async def _until(condition, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


def test_large_bodies_take_turns_and_a_small_one_does_not_wait_for_them():
    parse = BlockingParse()
    parsing = KeypointParsing(large_bytes=10, parse=parse)

    async def scenario():
        limits = QueryLimits()
        large = [asyncio.create_task(parsing.features(LARGE, limits)) for _ in range(3)]
        await _until(lambda: parse.started == 1)
        await asyncio.sleep(0.1)  # time for a second large parse to start, were it allowed
        assert parse.started == 1
        # Answered while the first large parse holds its turn and two wait for theirs.
        assert await asyncio.wait_for(parsing.features(SMALL, limits), 5) == "small"
        assert not any(task.done() for task in large)
        parse.release.set()
        assert await asyncio.gather(*large) == ["large"] * 3

    asyncio.run(scenario())
    assert parse.started == 3 and parse.most == 1


def test_a_cancelled_request_keeps_its_turn_until_its_parse_ends():
    parse = BlockingParse()
    parsing = KeypointParsing(large_bytes=10, parse=parse)

    async def scenario():
        limits = QueryLimits()
        first = asyncio.create_task(parsing.features(LARGE, limits))
        await _until(lambda: parse.started == 1)
        second = asyncio.create_task(parsing.features(LARGE, limits))
        first.cancel()  # the client went away; its thread goes on parsing
        await asyncio.sleep(0.1)
        assert parse.started == 1  # the second one still waits for the turn
        parse.release.set()
        assert await second == "large"
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())
    assert parse.started == 2 and parse.most == 1
