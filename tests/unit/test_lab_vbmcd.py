"""The lab's IPMI emulator keeps a host's other boot device behind the one a BMC asked for."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from plunder.lab import vbmcd


def boots(xml: str) -> list[str | None]:
    os_element = ET.fromstring(xml)
    vbmcd.with_fallback_boot(os_element)
    return [boot.get("dev") for boot in os_element.findall("boot")]


def test_pxe_once_still_leaves_the_disk_behind_it() -> None:
    assert boots("<os><type>hvm</type><boot dev='network'/></os>") == ["network", "hd"]


def test_disk_first_keeps_the_network_behind_it() -> None:
    assert boots("<os><boot dev='hd'/></os>") == ["hd", "network"]


def test_nothing_is_added_twice() -> None:
    assert boots("<os><boot dev='network'/><boot dev='hd'/></os>") == ["network", "hd"]
