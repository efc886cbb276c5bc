"""virtualbmc's daemon for the lab, with the one-time boot device kept one-time enough.

virtualbmc carries out "set boot device" by rewriting the domain's ``<os>`` to boot that one
device, for good. A lab host network-boots first and falls back to its disk; once the IPMI
BMC had asked for PXE, the disk was no longer bootable at all (SeaBIOS boots strictly what the
domain lists), so a provisioned host could never start its OS. A real BMC forgets a one-time
boot device after one boot. This wrapper keeps the requested device first and puts the other
one back behind it, so the next boot goes where it was asked and every later one still reaches
the disk. Run as ``python -m plunder.lab.vbmcd --foreground``.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import libvirt
from virtualbmc import utils, vbmc
from virtualbmc.cmd import vbmcd

FALLBACK_ORDER = ("network", "hd")


def with_fallback_boot(os_element: ET.Element) -> None:
    """Append the boot devices of :data:`FALLBACK_ORDER` that ``<os>`` does not list yet."""
    listed = [boot.get("dev") for boot in os_element.findall("boot")]
    for device in FALLBACK_ORDER:
        if device not in listed:
            ET.SubElement(os_element, "boot", {"dev": device})


def _keeping_fallback(original: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def set_boot_device(self: Any, bootdevice: str) -> Any:
        result = original(self, bootdevice)
        if result is not None:  # an IPMI error code: nothing was changed
            return result
        with utils.libvirt_open(**self._conn_args) as conn:
            domain = utils.get_libvirt_domain(conn, self.domain_name)
            # the definition virtualbmc just wrote (the running domain still has the old one)
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
            tree = ET.fromstring(domain.XMLDesc(flags))
            if tree.find("devices/*/boot") is not None:  # a per-device order: not ours to touch
                return None
            for os_element in tree.findall("os"):
                with_fallback_boot(os_element)
            conn.defineXML(ET.tostring(tree, encoding="unicode"))
        return None

    return set_boot_device


def main() -> int:
    """Run virtualbmc's vbmcd, with :func:`with_fallback_boot` after each boot device change."""
    vbmc.VirtualBMC.set_boot_device = _keeping_fallback(vbmc.VirtualBMC.set_boot_device)
    return int(vbmcd.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
