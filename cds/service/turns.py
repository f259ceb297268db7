"""Service calls take their turns at the event loop in the order they came.

A call's work is one long synchronous step (JWT check, parsing, rules) between
short waits. Without turns, every call that became ready while the loop was busy
runs in the loop's next pass, one after another, and the answers of calls whose
traces were committed meanwhile wait behind that whole wave: under load, which
call waits one wave and which waits three is down to chance, and the slowest
answers (p99) take far longer than the average. With turns, one call's step runs
per pass, in the order the calls asked, and answers go out between them.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Turns"]


class Turns:
    """First come, first served: at most one call starts its work per loop pass."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: deque[asyncio.Future[None]] = deque()
        #: a call has started this pass; the next one is let go on the next pass
        self._passing = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def take(self) -> None:
        """Return when it is this call's turn; at once if nobody else wants one."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): start afresh
            self._loop, self._waiting, self._passing = loop, deque(), False
        if not self._passing:
            self._passing = True
            loop.call_soon(self._next)
            return
        turn = loop.create_future()
        self._waiting.append(turn)
        await turn

    def _next(self) -> None:
        """Let the longest-waiting call go (it runs on the next pass), then come back."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # not cancelled (its client went away)
                turn.set_result(None)
                assert self._loop is not None
                self._loop.call_soon(self._next)
                return
        self._passing = False
