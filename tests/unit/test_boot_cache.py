"""The boot service's host cache keeps the newest copy: a late write answer never goes back."""

from __future__ import annotations

import pytest

from plunder.api.inventory import PlunderHost
from plunder.boot.backend.kube import older_than_cached


def copy(version: str, uid: str = "u1") -> PlunderHost:
    return PlunderHost.model_validate(
        {
            "metadata": {"name": "h", "namespace": "ns", "uid": uid, "resourceVersion": version},
            "spec": {"bootMACAddress": "02:00:00:00:00:01"},
        }
    )


@pytest.mark.parametrize(
    ("incoming", "cached", "older"),
    [
        (copy("31200"), copy("31201"), True),  # a write's answer after the watch's newer event
        (copy("9999"), copy("31201"), True),  # numbers, not strings: "9999" > "31201"
        (copy("31202"), copy("31201"), False),
        (copy("31201"), copy("31201"), False),
        (copy("5", uid="u2"), copy("31201"), False),  # deleted and made again: another object
        (copy("abc"), copy("31201"), False),  # not a revision: no order to keep
        (copy("1"), None, False),
    ],
)
def test_only_an_older_copy_of_the_same_host_is_refused(
    incoming: PlunderHost, cached: PlunderHost | None, older: bool
) -> None:
    assert older_than_cached(incoming, cached) is older
