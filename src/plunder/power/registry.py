"""Finding a power driver by name, through the ``plunder.power`` entry points.

Drivers are declared in pyproject.toml (``[project.entry-points."plunder.power"]``), so another
package can add one without touching this code, as ironic's drivers are found.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

from plunder.power import base

GROUP = "plunder.power"


@cache
def driver_class(name: str) -> type[base.PowerDriver]:
    """The driver class registered under ``name``.

    Raises:
        BMCAddressError: No driver has that name (the message lists those that exist).
    """
    found = metadata.entry_points(group=GROUP, name=name)
    for entry_point in found:
        loaded = entry_point.load()
        if isinstance(loaded, type) and issubclass(loaded, base.PowerDriver):
            return loaded
        raise base.BMCAddressError(f"entry point {entry_point.value} is not a power driver")
    raise base.BMCAddressError(
        f"no power driver {name!r}; installed: {', '.join(driver_names()) or 'none'}"
    )


def driver_names() -> list[str]:
    """The names of every installed driver."""
    return sorted({entry_point.name for entry_point in metadata.entry_points(group=GROUP)})


def driver_for(settings: base.BMCSettings) -> base.PowerDriver:
    """A driver for ``settings``: the one the address's scheme names, ``none`` without one."""
    name = settings.address.driver if settings.address is not None else "none"
    return driver_class(name)(settings)
