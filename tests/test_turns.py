"""Service calls start their work in the order they asked, one per event-loop pass."""

from __future__ import annotations

import asyncio

from cds.service.turns import Turns


class PassCounter:
    """Counts the event loop's passes: a callback that re-schedules itself runs once in each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.passes = 0
        self._loop = loop
        self._running = True
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.passes += 1
        if self._running:
            self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._running = False


async def _ask(turns: Turns, name: str, started: list[tuple[str, int]], clock: PassCounter) -> None:
    await turns.take()
    started.append((name, clock.passes))


def test_calls_start_in_the_order_they_asked_one_per_pass() -> None:
    async def run() -> list[tuple[str, int]]:
        turns, started = Turns(), []
        clock = PassCounter(asyncio.get_running_loop())
        await asyncio.gather(*(_ask(turns, name, started, clock) for name in "abcde"))
        clock.stop()
        return started

    started = asyncio.run(run())
    assert [name for name, _ in started] == list("abcde")
    passes = [p for _, p in started]
    assert len(set(passes)) == len(passes)  # never two in one pass


def test_a_lone_call_goes_at_once() -> None:
    async def run() -> list[int]:
        turns = Turns()
        clock = PassCounter(asyncio.get_running_loop())
        waited = []
        for _ in range(3):  # one after another, each alone
            before = clock.passes
            await turns.take()
            waited.append(clock.passes - before)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        clock.stop()
        return waited

    assert asyncio.run(run()) == [0, 0, 0]


def test_a_call_that_went_away_does_not_hold_up_the_others() -> None:
    async def run() -> list[str]:
        turns, started = Turns(), []
        clock = PassCounter(asyncio.get_running_loop())
        first = asyncio.ensure_future(_ask(turns, "a", started, clock))
        gone = asyncio.ensure_future(_ask(turns, "b", started, clock))
        last = asyncio.ensure_future(_ask(turns, "c", started, clock))
        await asyncio.sleep(0)  # all three have asked
        gone.cancel()
        await asyncio.wait_for(asyncio.gather(first, last), timeout=2)
        clock.stop()
        return [name for name, _ in started]

    assert asyncio.run(run()) == ["a", "c"]


def test_turns_work_on_a_new_event_loop() -> None:
    turns = Turns()
    old = asyncio.new_event_loop()

    async def ask_and_stop() -> None:
        await turns.take()
        asyncio.get_running_loop().stop()  # before the pass that would hand the turn on

    asked = old.create_task(ask_and_stop())
    old.run_forever()
    old.close()
    assert asked.done()

    async def ask_again() -> None:
        await asyncio.wait_for(turns.take(), timeout=2)

    asyncio.run(ask_again())
    assert turns.waiting == 0
