"""The one clock the token core reads: monotonic time for deadlines, timers and back-off; wall
time only to read the platform's expiry times (a TokenSet's times are Unix seconds, persisted
and shared between processes).

Everything in :mod:`proxy_addon.tokens` that waits or schedules goes through a :class:`Clock`,
so tests drive it with a fake one. :class:`SystemClock` is the only place that touches
``time`` and the event loop's timers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (deadlines, timers, budgets)."""
        ...

    def wall(self) -> float:
        """Unix time (only for comparing with a token set's expiry)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once after ``delay`` seconds (on the running event loop)."""
        ...


class SystemClock:
    """The real clock: ``time`` and the running asyncio loop."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


async def within[T](clock: Clock, awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, for at most ``seconds`` of ``clock`` time: then it is
    cancelled and TimeoutError raised (``asyncio.wait_for`` on the given clock)."""
    task = asyncio.ensure_future(awaitable)
    expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def expire() -> None:
        if not expired.done():
            expired.set_result(None)

    timer = clock.call_later(max(0.0, seconds), expire)
    try:
        await asyncio.wait({task, expired}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        timer.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise TimeoutError


def monotonic_at(clock: Clock, wall_time: float) -> float:
    """The monotonic instant at which the wall clock will read ``wall_time``."""
    return clock.monotonic() + (wall_time - clock.wall())
