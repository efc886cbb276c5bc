"""The patch of kopf's start-up barrier: waiters wake only when the set's state changes."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits.aiotoggles import ToggleSet

from plunder.operator import kopf_startup


async def test_the_barrier_opens_exactly_when_the_last_object_is_indexed() -> None:
    assert kopf_startup.apply(), "the pinned kopf is the one the patch is for"
    barrier = ToggleSet(all)  # kopf's "everything indexed": on when every toggle is on
    first = await barrier.make_toggle(False, name="first")
    waiter = asyncio.create_task(barrier.wait_for(True))
    second = await barrier.make_toggle(False, name="second")  # still off: no change
    await first.turn_to(True)
    await asyncio.sleep(0)  # let the waiter look
    assert not waiter.done(), "one object is still not indexed"
    await barrier.drop_toggle(second)  # the last one: the state changes
    await asyncio.wait_for(waiter, 1)
    assert barrier.is_on()


async def test_waking_is_linear_in_the_number_of_objects() -> None:
    kopf_startup.apply()
    barrier = ToggleSet(all)
    wakeups = 0

    def counted() -> bool:
        nonlocal wakeups
        wakeups += 1
        return barrier.is_on()

    toggles = [await barrier.make_toggle(False) for _ in range(200)]

    async def wait() -> None:
        async with barrier._condition:
            await barrier._condition.wait_for(counted)

    waiters = [asyncio.create_task(wait()) for _ in range(50)]
    await asyncio.sleep(0)
    for _ in range(200):  # objects arrive one by one, the loop running between them
        toggles.append(await barrier.make_toggle(False))
        await asyncio.sleep(0)
    for toggle in toggles:  # and are indexed one by one
        await barrier.drop_toggle(toggle)
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    # Unpatched, kopf woke every waiter on every add and drop: 50 x 600 wake-ups.
    assert wakeups <= 50 * 2, f"{wakeups} wake-ups for 400 toggles and 50 waiters"
