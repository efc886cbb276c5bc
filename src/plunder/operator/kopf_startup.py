"""Make kopf's start-up barrier linear in the number of indexed objects (a patch of kopf 1.45).

Before kopf runs any handler it waits until every object of every indexed resource has been
indexed: each such object adds a toggle to one ``ToggleSet`` and drops it once indexed, and every
object waits on the set's condition. kopf notifies *all* waiters on *every* add and drop, so a
start with N objects costs N × N wake-ups: with 1,000 hosts, machines and Cluster API Machines,
about 16 s of one core before the first reconcile (measured with py-spy: ``Condition.wait_for``).

A waiter only waits for the set's overall state (:meth:`ToggleSet.is_on`) to become one value,
so a notification is needed only when adding or dropping a toggle changes that state. The patch
keeps kopf's methods and their locking, and skips the notification otherwise. The individual
toggles still notify when they are turned, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import version

from kopf._cogs.aiokits import aiotoggles

PATCHED_KOPF = "1.45.2"
"""The kopf release whose private ``ToggleSet`` this patch was written for and tested with."""
log = logging.getLogger(__name__)


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, [toggle])


def apply() -> bool:
    """Install the patch (idempotent); only on the kopf it was written for.

    Another kopf runs unpatched (correct, only slower to start with thousands of objects), and
    says so: the patch should then be checked against it, or dropped if kopf fixed this itself.
    """
    installed = version("kopf")
    if installed != PATCHED_KOPF:
        log.warning("kopf %s is not %s: its start-up is left unpatched", installed, PATCHED_KOPF)
        return False
    aiotoggles.ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    return True
