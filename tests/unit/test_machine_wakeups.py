"""The in-process plumbing of the machine controller: work queue, wakeups and claim ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from plunder.operator.machine import ClaimLedger
from plunder.operator.wakeups import Key, Wakeups
from plunder.operator.workqueue import WorkQueue


class Recorder:
    """A reconcile that records its keys and holds each run until released."""

    def __init__(self, delay: float | None = None) -> None:
        self.runs: list[Key] = []
        self.running: set[Key] = set()
        self.overlapped = False
        self.release = asyncio.Event()
        self.release.set()
        self.delay = delay

    async def __call__(self, key: Key) -> float | None:
        self.overlapped |= key in self.running
        self.running.add(key)
        self.runs.append(key)
        await self.release.wait()
        self.running.discard(key)
        return self.delay


async def until(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def running(queue: WorkQueue[Key], body: Callable[[], Awaitable[None]]) -> None:
    queue.start()
    try:
        await body()
    finally:
        await queue.stop()


async def test_a_key_added_many_times_runs_once() -> None:
    recorder = Recorder()
    queue: WorkQueue[Key] = WorkQueue(recorder, workers=4, error_retry=5)
    for _ in range(10):
        queue.add(("ns", "m1"))
    queue.add(("ns", "m2"))

    async def body() -> None:
        await until(lambda: len(recorder.runs) == 2)
        await asyncio.sleep(0.05)
        assert sorted(recorder.runs) == [("ns", "m1"), ("ns", "m2")]

    await running(queue, body)


async def test_an_add_during_a_run_runs_again_after_it_never_beside_it() -> None:
    """A wake that arrives while the machine is reconciled is not lost."""
    recorder = Recorder()
    recorder.release.clear()
    queue: WorkQueue[Key] = WorkQueue(recorder, workers=4, error_retry=5)
    key = ("ns", "m1")

    async def body() -> None:
        queue.add(key)
        await until(lambda: key in recorder.running)
        queue.add(key)
        queue.add(key)
        await asyncio.sleep(0.05)
        assert recorder.runs == [key]  # the second run waits for the first
        recorder.release.set()
        await until(lambda: len(recorder.runs) == 2)
        await asyncio.sleep(0.05)
        assert recorder.runs == [key, key]
        assert not recorder.overlapped

    await running(queue, body)


async def test_a_requeue_after_a_delay_and_the_earliest_wins() -> None:
    recorder = Recorder(delay=0.1)
    queue: WorkQueue[Key] = WorkQueue(recorder, workers=1, error_retry=5)
    key = ("ns", "m1")

    async def body() -> None:
        queue.add(key)
        await until(lambda: len(recorder.runs) >= 3)  # ran, and again after 0.1 s, twice
        recorder.delay = None
        queue.add_after(("ns", "m2"), 60)
        queue.add_after(("ns", "m2"), 0.05)
        await until(lambda: ("ns", "m2") in recorder.runs)
        queue.add_after(("ns", "gone"), 0.05)
        queue.forget(("ns", "gone"))
        await asyncio.sleep(0.15)
        assert ("ns", "gone") not in recorder.runs

    await running(queue, body)


async def test_a_failing_reconcile_is_retried_and_the_worker_lives_on() -> None:
    calls: list[Key] = []

    async def failing(key: Key) -> float | None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return None

    queue: WorkQueue[Key] = WorkQueue(failing, workers=1, error_retry=0.05)

    async def body() -> None:
        queue.add(("ns", "m1"))
        await until(lambda: len(calls) == 2)
        queue.add(("ns", "m2"))
        await until(lambda: len(calls) == 3)

    await running(queue, body)


def test_freed_hosts_wake_only_the_machines_waiting_in_their_namespace() -> None:
    woken: list[Key] = []
    wakeups = Wakeups(woken.append)
    wakeups.note(("ns", "waiting"), "c1", waiting_for_host=True)
    wakeups.note(("ns", "busy"), "c1", waiting_for_host=False)
    wakeups.note(("other", "waiting"), "c2", waiting_for_host=True)
    wakeups.wake_waiting_for_host("ns")
    assert woken == [("ns", "waiting")]
    woken.clear()
    wakeups.wake_cluster("ns", "c1")
    assert sorted(woken) == [("ns", "busy"), ("ns", "waiting")]


def test_a_released_hosts_watcher_is_woken_until_the_machine_is_gone() -> None:
    woken: list[Key] = []
    wakeups = Wakeups(woken.append)
    key = ("ns", "m1")
    wakeups.watch_host(("ns", "h1"), key)
    wakeups.note(key, "c1", waiting_for_host=True)
    wakeups.wake_host_watcher(("ns", "h1"))
    assert woken == [key]
    wakeups.forget(key)
    wakeups.wake_host_watcher(("ns", "h1"))
    wakeups.wake_waiting_for_host("ns")
    wakeups.wake_cluster("ns", "c1")
    assert woken == [key]


def test_the_ledger_hides_hosts_claimed_here_until_the_cache_shows_them() -> None:
    ledger = ClaimLedger()
    ledger.record(("ns", "h1"))
    ledger.record(("other", "h2"))
    assert ledger.taken("ns") == {"h1"}
    ledger.seen(("ns", "h1"))
    assert ledger.taken("ns") == frozenset()
    ledger.TTL = 0.0
    assert ledger.taken("other") == frozenset()
