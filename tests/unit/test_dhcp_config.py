"""What dnsmasq is told to answer: per-architecture boot files, iPXE chaining, modes."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from plunder.boot.dhcp.config import boot_file_for, render_dnsmasq_conf
from plunder.boot.dhcp.leases import LeaseTable
from plunder.boot.settings import BootSettings, DhcpSettings

SETTINGS = BootSettings(address=IPv4Address("172.31.99.1"), run_dir=Path("/run/plunder"))


@pytest.mark.parametrize(
    ("arch", "is_ipxe", "expected"),
    [
        (0, False, "undionly.kpxe"),  # legacy BIOS PXE ROM
        (7, False, "ipxe.efi"),  # x86-64 UEFI
        (9, False, "ipxe.efi"),  # x86-64 UEFI (EBC number some firmwares send)
        (0, True, "chain.ipxe"),  # already iPXE: a script (TFTP), not the binary again
        (7, True, "chain.ipxe"),
        (11, False, None),  # ARM64 UEFI: not served
        (None, False, None),  # no client-arch: not a PXE client
    ],
)
def test_boot_file_by_client_architecture(arch: int | None, is_ipxe: bool, expected: str) -> None:
    assert boot_file_for(arch, is_ipxe, SETTINGS) == expected


def test_full_mode_leases_addresses_and_stops_ipxe_waiting_for_proxydhcp() -> None:
    conf = render_dnsmasq_conf(SETTINGS, "/run/leases", "/run/tftp").splitlines()
    assert "dhcp-range=172.31.99.100,172.31.99.199,255.255.255.0,1h" in conf
    assert "dhcp-option=tag:ipxe,encap:175,176,1b" in conf
    assert "dhcp-boot=tag:ipxe,chain.ipxe,,172.31.99.1" in conf
    assert "dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe" in conf
    assert "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi" in conf
    assert {"dhcp-match=set:efi64,option:client-arch,7", "no-ping", "port=0"} <= set(conf)
    assert {"user=root", "group=root"} <= set(conf)  # no credential change: it dies with us
    assert "dhcp-range=::,constructor:br0,ra-only" in conf
    assert not any("proxy" in line for line in conf)


def test_proxy_mode_leases_nothing_and_offers_pxe_services() -> None:
    proxy = BootSettings(
        address=IPv4Address("172.31.99.1"), run_dir=Path("/run"), dhcp=DhcpSettings(mode="proxy")
    )
    conf = render_dnsmasq_conf(proxy, "/run/leases", "/run/tftp").splitlines()
    assert "dhcp-range=172.31.99.0,proxy,255.255.255.0" in conf
    assert 'pxe-service=tag:!ipxe,x86PC,"plunder",undionly' in conf
    assert 'pxe-service=tag:!ipxe,x86-64_EFI,"plunder",ipxe' in conf
    assert not any(line.startswith("dhcp-authoritative") for line in conf)
    assert "dhcp-option=tag:ipxe,encap:175,176,1b" not in conf
    # iPXE takes a ProxyDHCP answer only with a next-server beside the file
    assert "dhcp-boot=tag:ipxe,chain.ipxe,,172.31.99.1" in conf


def test_lease_table_follows_the_file(tmp_path: Path) -> None:
    leases = tmp_path / "leases"
    table = LeaseTable(leases)
    assert table.mac_for("172.31.99.101") is None
    leases.write_text("1764000000 00:50:56:A5:11:20 172.31.99.101 * 01:00:50:56:a5:11:20\n")
    assert table.mac_for("172.31.99.101") == "00:50:56:a5:11:20"
    leases.write_text("1764000000 00:50:56:a5:b5:f1 172.31.99.101 * *\nbroken line\n")
    assert table.mac_for("172.31.99.101") == "00:50:56:a5:b5:f1"
    assert LeaseTable(None).mac_for("172.31.99.101") is None


def test_full_mode_hands_out_the_gateway_and_name_servers_it_is_given() -> None:
    closed = render_dnsmasq_conf(SETTINGS, "/run/leases", "/run/tftp").splitlines()
    assert "dhcp-option=option:router" in closed  # none: the network is closed
    assert not any("dns-server" in line for line in closed)
    dhcp = DhcpSettings(
        router=IPv4Address("172.31.99.1"),
        dns_servers=(IPv4Address("172.31.99.1"), IPv4Address("172.31.99.2")),
    )
    settings = BootSettings(address=IPv4Address("172.31.99.1"), run_dir=Path("/run"), dhcp=dhcp)
    conf = render_dnsmasq_conf(settings, "/run/leases", "/run/tftp").splitlines()
    assert "dhcp-option=option:router,172.31.99.1" in conf
    assert "dhcp-option=option:dns-server,172.31.99.1,172.31.99.2" in conf
