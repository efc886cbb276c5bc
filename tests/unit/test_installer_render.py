"""Preseed and kickstart rendering, checked by the installers' own parsers.

``debconf-set-selections -c`` (Debian's debconf) parses a preseed file as the installer does and
reports syntax errors; pykickstart's ``ksvalidator`` parses a kickstart file with RHEL 9's
grammar. Each renders a host with a static address, SSH keys (one with a quote in its
comment) and a DHCP host; a deliberately broken line must fail the same checkers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plunder.api.inventory import PlunderHost
from plunder.boot.installer import kickstart, preseed, seed
from plunder.boot.installer.target import InstallTarget, install_target, split_name

SERVER = "http://172.31.99.1:8080"
MAC = "52:54:00:12:34:56"
KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl o'brien@lab",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=",
]
KSVALIDATOR = Path(sys.executable).with_name("ksvalidator")


def host(**spec: Any) -> PlunderHost:
    return PlunderHost.model_validate(
        {
            "apiVersion": PlunderHost.info.api_version,
            "kind": "PlunderHost",
            "metadata": {"name": "web-1.lab.example", "namespace": "default", "uid": "u1"},
            "spec": {"bootMACAddress": MAC, "deploymentType": "preseed", **spec},
            "status": {"state": "provisioning", "agentBootID": "b1"},
        }
    )


STATIC_V4 = {
    "network": {
        "ipAddress": "172.31.99.20",
        "prefixLength": 24,
        "gateway": "172.31.99.1",
        "nameservers": ["172.31.99.1", "9.9.9.9"],
    },
    "sshAuthorizedKeys": KEYS,
}
STATIC_V6 = {"network": {"ipAddress": "fd00:99::20", "prefixLength": 64, "gateway": "fd00:99::1"}}
TARGETS = {
    "static-v4": install_target(host(**STATIC_V4), SERVER),
    "static-v6": install_target(host(**STATIC_V6), SERVER),
    "dhcp": install_target(host(), SERVER),
}


def debconf_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["debconf-set-selections", "-c", str(path)], capture_output=True, text=True, check=False
    )


def ksvalidate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KSVALIDATOR), "-v", "RHEL9", str(path)], capture_output=True, text=True, check=False
    )


def test_the_target_is_taken_from_the_host() -> None:
    target = TARGETS["static-v4"]
    assert (target.hostname, target.domain, target.fqdn) == (
        "web-1",
        "lab.example",
        "web-1.lab.example",
    )
    assert target.disk == "/dev/vda" and target.server == SERVER and target.mac == MAC
    assert target.static is not None and target.static.netmask == "255.255.255.0"
    v6 = TARGETS["static-v6"].static
    assert v6 is not None and v6.version == 6 and v6.netmask == "ffff:ffff:ffff:ffff::"
    assert TARGETS["dhcp"].static is None and TARGETS["dhcp"].ssh_authorized_keys == ()
    hinted = install_target(host(rootDeviceHints={"deviceName": "/dev/sdb"}), SERVER)
    assert hinted.disk == "/dev/sdb"


def test_names_become_one_label_and_a_domain() -> None:
    assert split_name("host-00-50-56-a5-11-20") == ("host-00-50-56-a5-11-20", "localdomain")
    assert split_name("Web-1.Example.COM") == ("web-1", "example.com")
    label, _ = split_name("a" * 62 + "-b" * 10)
    assert len(label) <= 63 and not label.endswith("-")


@pytest.mark.parametrize("case", sorted(TARGETS))
def test_rendered_preseed_passes_debconfs_checker(case: str, tmp_path: Path) -> None:
    path = tmp_path / "preseed.cfg"
    path.write_text(preseed.render_preseed(TARGETS[case]))
    result = debconf_check(path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_broken_preseed_line_fails_debconfs_checker(tmp_path: Path) -> None:
    path = tmp_path / "preseed.cfg"
    path.write_text(preseed.render_preseed(TARGETS["dhcp"]) + "d-i netcfg/get_domain\n")
    result = debconf_check(path)
    assert result.returncode != 0 and "parse error" in result.stderr


def test_preseed_holds_the_network_the_keys_and_the_seed_step() -> None:
    text = preseed.render_preseed(TARGETS["static-v4"])
    lines = text.splitlines()
    assert "d-i netcfg/get_hostname string web-1" in lines
    assert "d-i netcfg/get_domain string lab.example" in lines
    assert "d-i netcfg/get_ipaddress string 172.31.99.20" in lines
    assert "d-i netcfg/get_netmask string 255.255.255.0" in lines
    assert "d-i netcfg/get_nameservers string 172.31.99.1 9.9.9.9" in lines
    assert "d-i preseed/early_command string kill-all-dhcp; netcfg" in lines
    assert "d-i partman-auto/disk string /dev/vda" in lines
    assert "d-i passwd/root-password-crypted password !" in lines
    late = next(line for line in lines if line.startswith("d-i preseed/late_command string "))
    assert "echo 'ssh-ed25519 AAAA" in late and "o'\"'\"'brien@lab'" in late
    assert f"U={SERVER}/agent/v1/{MAC}" in late
    assert "for f in meta-data user-data vendor-data network-config;" in late
    assert late.endswith("; post phase=done")
    assert "\\" not in late, "d-i's shell debconf-set-selections would echo backslashes"


def test_dhcp_preseed_has_no_static_lines_and_fetches_no_network_config() -> None:
    text = preseed.render_preseed(TARGETS["dhcp"])
    assert "netcfg/get_ipaddress" not in text and "early_command" not in text
    assert "for f in meta-data user-data vendor-data; do" in text
    assert "authorized_keys" not in text


def test_the_token_is_read_at_install_time_never_written_into_a_file() -> None:
    for target in TARGETS.values():
        for text in (preseed.render_preseed(target), kickstart.render_kickstart(target)):
            assert "token=" not in text.replace(f"{seed.TOKEN_PARAMETER}=", "")
            assert "/proc/cmdline" in text


@pytest.mark.parametrize("case", sorted(TARGETS))
def test_rendered_kickstart_passes_ksvalidator(case: str, tmp_path: Path) -> None:
    path = tmp_path / "ks.cfg"
    path.write_text(kickstart.render_kickstart(TARGETS[case]))
    result = ksvalidate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower()


def test_a_broken_kickstart_line_fails_ksvalidator(tmp_path: Path) -> None:
    path = tmp_path / "ks.cfg"
    path.write_text(kickstart.render_kickstart(TARGETS["dhcp"]) + "autopart --nosuchoption\n")
    result = ksvalidate(path)
    assert result.returncode != 0 and "--nosuchoption" in result.stdout + result.stderr


def test_kickstart_holds_the_network_the_keys_and_the_seed_step() -> None:
    text = kickstart.render_kickstart(TARGETS["static-v4"])
    assert (
        f"network --device={MAC} --onboot=yes --activate --bootproto=static --ip=172.31.99.20 "
        "--netmask=255.255.255.0 --gateway=172.31.99.1 --nameserver=172.31.99.1,9.9.9.9 "
        "--hostname=web-1.lab.example"
    ) in text
    assert "sshkey" not in text, "kickstart takes one sshkey per user: keys go in by %post"
    assert "ignoredisk --only-use=vda" in text and "rootpw --lock" in text
    post = text.split("%post --erroronfail\n", 1)[1]
    assert "mkdir -p -m 0700 /root/.ssh" in post and "echo 'ssh-ed25519 AAAA" in post
    assert "mkdir -p /var/lib/cloud/seed/nocloud" in post
    assert post.endswith("post phase=done\nrestorecon -R /root /var/lib/cloud\n%end\n")
    v6 = kickstart.render_kickstart(TARGETS["static-v6"])
    assert "--noipv4 --ipv6=fd00:99::20/64 --ipv6gateway=fd00:99::1" in v6
    assert "--bootproto=dhcp" in kickstart.render_kickstart(TARGETS["dhcp"])


def test_a_value_that_would_break_a_preseed_line_is_refused() -> None:
    broken = InstallTarget(MAC, "h", "d\nd-i x string y", SERVER, "/dev/vda", None, ())
    with pytest.raises(ValueError, match="one line"):
        preseed.render_preseed(broken)
