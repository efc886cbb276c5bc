"""The in-process plumbing of the machine controller: wakeups and the claim ledger."""

from __future__ import annotations

import asyncio
import time

import pytest

from plunder.operator.machine import ClaimLedger, Wakeups


async def test_a_wake_before_the_sleep_is_not_lost() -> None:
    wakeups = Wakeups()
    key = ("ns", "m1")
    wakeups.listen(key)
    wakeups.wake(key)  # arrives while the machine is still reconciling
    started = time.monotonic()
    await wakeups.sleep(key, 5)
    assert time.monotonic() - started < 1
    with pytest.raises(TimeoutError):  # consumed: the next sleep waits again
        await asyncio.wait_for(wakeups.sleep(key, 5), 0.2)


async def test_freed_hosts_wake_only_the_machines_waiting_in_their_namespace() -> None:
    wakeups = Wakeups()
    for key in (("ns", "waiting"), ("ns", "busy"), ("other", "waiting")):
        wakeups.listen(key)
    wakeups.note(("ns", "waiting"), "c1", waiting_for_host=True)
    wakeups.note(("ns", "busy"), "c1", waiting_for_host=False)
    wakeups.note(("other", "waiting"), "c2", waiting_for_host=True)
    wakeups.wake_waiting_for_host("ns")
    await asyncio.wait_for(wakeups.sleep(("ns", "waiting"), 5), 1)
    for key in (("ns", "busy"), ("other", "waiting")):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wakeups.sleep(key, 5), 0.1)
    wakeups.wake_cluster("ns", "c1")
    await asyncio.wait_for(wakeups.sleep(("ns", "busy"), 5), 1)


async def test_a_released_hosts_watcher_is_woken_and_forgotten() -> None:
    wakeups = Wakeups()
    key = ("ns", "m1")
    wakeups.listen(key)
    wakeups.watch_host(("ns", "h1"), key)
    wakeups.wake_host_watcher(("ns", "h1"))
    await asyncio.wait_for(wakeups.sleep(key, 5), 1)
    wakeups.forget(key)
    wakeups.wake_host_watcher(("ns", "h1"))  # nobody listens any more: a no-op


async def test_a_stopping_daemon_keeps_what_the_deletion_waits_for() -> None:
    """A deleted machine's daemon stops while its deletion handler waits for a host's wipe."""
    wakeups = Wakeups()
    key = ("ns", "m1")
    wakeups.listen(key)  # the daemon
    wakeups.listen(key)  # the deletion handler
    wakeups.watch_host(("ns", "h1"), key)
    wakeups.forget(key)  # the daemon stopped
    wakeups.wake_host_watcher(("ns", "h1"))  # the wipe finished
    await asyncio.wait_for(wakeups.sleep(key, 5), 1)


def test_the_ledger_hides_hosts_claimed_here_until_the_cache_shows_them() -> None:
    ledger = ClaimLedger()
    ledger.record(("ns", "h1"))
    ledger.record(("other", "h2"))
    assert ledger.taken("ns") == {"h1"}
    ledger.seen(("ns", "h1"))
    assert ledger.taken("ns") == frozenset()
    ledger.TTL = 0.0
    assert ledger.taken("other") == frozenset()
