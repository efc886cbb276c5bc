"""A keyed work queue with a fixed number of workers, as controller-runtime has.

Watch events do not run reconciles themselves: they add the key of the object to reconcile.
A key is queued at most once however often it is added; a key being reconciled is never
reconciled by a second worker at the same time, and an add that arrives meanwhile queues it
again once the running reconcile ends (so no change is missed). A reconcile returns the seconds
after which it wants to run again (or None); the earliest of the requested times wins.

Memory and concurrency do not grow with the number of objects: a thousand machines are a
thousand keys in a set and a few timers, reconciled by :attr:`WorkQueue.workers` tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)

Reconcile = Callable[[K], Awaitable[float | None]]
"""Reconcile one key; the seconds until it should run again, or None."""


class WorkQueue(Generic[K]):
    """Deduplicated keys, reconciled by a fixed number of workers."""

    def __init__(self, reconcile: Reconcile[K], workers: int, error_retry: float) -> None:
        self._reconcile = reconcile
        self.workers = workers
        self._error_retry = error_retry
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: K) -> None:
        """Reconcile ``key`` soon (once, however often it is added before it runs).

        The first add starts the workers: they inherit the caller's context, and kopf's poster
        of Kubernetes Events is known only in a handler's (the one that adds).
        """
        self.start()
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Reconcile ``key`` in ``delay`` seconds, unless it is due earlier already."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if (timer := self._timers.get(key)) is not None:
            if timer[0] <= due:
                return
            timer[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._due, key))

    def forget(self, key: K) -> None:
        """``key`` is gone: drop its timer (a queued run finds nothing and ends)."""
        if (timer := self._timers.pop(key, None)) is not None:
            timer[1].cancel()

    def _due(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        """Keys waiting for a worker."""
        return len(self._queued)

    def start(self) -> None:
        """Start the workers (in the running loop, with a copy of the caller's context)."""
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Cancel the workers and the timers; wait for the workers to end."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self.forget(key)  # this run supersedes a later one asked for before
            self._running.add(key)
            try:
                delay = await self._reconcile(key)
            except Exception:  # noqa: BLE001 - one key's failure must not end the worker
                log.exception("reconcile of %s failed; retrying", key)
                delay = self._error_retry
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay is not None:
                self.add_after(key, delay)
