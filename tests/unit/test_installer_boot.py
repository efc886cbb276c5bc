"""Which hosts boot an installer, and the iPXE script and command line they get."""

from __future__ import annotations

from typing import Any

from plunder.api.inventory import PlunderHost
from plunder.boot.ipxe import decide, scripts

FILES = "http://172.31.99.1:8080/files"
SERVER = "http://172.31.99.1:8080"
MAC = "00:50:56:a5:11:20"


def host(kind: str, state: str, accepted: bool = True, **status: Any) -> PlunderHost:
    return PlunderHost.model_validate(
        {
            "apiVersion": PlunderHost.info.api_version,
            "kind": "PlunderHost",
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"bootMACAddress": MAC, "deploymentType": kind, "accepted": accepted},
            "status": {"state": state, **status},
        }
    )


def decision(target: PlunderHost) -> scripts.BootDecision:
    return decide.decide(target, FILES, "agent-args", True, server=SERVER, token="t0k")


def test_a_preseed_host_in_provisioning_boots_the_debian_installer() -> None:
    chosen = decision(host("preseed", "provisioning"))
    assert chosen.action == "kernel" and "Debian installer" in chosen.reason
    assert (chosen.kernel, chosen.initrd) == (
        f"{FILES}/installer/debian/linux",
        f"{FILES}/installer/debian/initrd.gz",
    )
    args = chosen.cmdline.split()
    assert args[:2] == ["auto=true", "priority=critical"]
    assert f"url={SERVER}/installer/v1/{MAC}/preseed.cfg?token=t0k" in args
    assert "plunder.token=t0k" in args and "BOOTIF=01-00-50-56-a5-11-20" in args
    assert "hostname=web-1" in args and "domain=localdomain" in args
    assert "netcfg/get_nameservers=172.31.99.1" in args
    assert "netcfg/no_default_route=true" in args
    assert args.index("plunder.token=t0k") < args.index("---"), "the token must not persist"
    script = scripts.render_script(chosen, MAC, SERVER, 5)
    assert f"kernel {FILES}/installer/debian/linux initrd=initrd.gz auto=true" in script
    assert f"initrd {FILES}/installer/debian/initrd.gz || goto failed" in script


def test_a_kickstart_host_boots_the_rhel_installer_from_the_published_tree() -> None:
    chosen = decision(host("kickstart", "provisioning"))
    assert chosen.kernel == f"{FILES}/installer/rhel/vmlinuz"
    args = chosen.cmdline.split()
    assert f"inst.ks={SERVER}/installer/v1/{MAC}/kickstart.cfg?token=t0k" in args
    assert f"inst.repo={FILES}/installer/rhel/" in args and "plunder.token=t0k" in args


def test_after_the_install_wrote_the_disk_the_host_boots_it() -> None:
    written = host(
        "preseed",
        "provisioning",
        phases=[
            {
                "name": "writing",
                "started": "2026-11-25T10:00:00Z",
                "finished": "2026-11-25T10:09:00Z",
            }
        ],
    )
    assert not decide.installs(written)
    assert decision(written).action == "disk"
    installing = host(
        "preseed", "provisioning", phases=[{"name": "writing", "started": "2026-11-25T10:00:00Z"}]
    )
    assert decide.installs(installing) and decision(installing).action == "kernel"


def test_only_provisioning_hosts_boot_the_installer() -> None:
    for state in ("available", "deprovisioning", "error"):
        assert not decide.installs(host("preseed", state))
        assert "installer" not in (decision(host("preseed", state)).kernel or "")


def test_a_host_nobody_accepted_never_boots_an_installer() -> None:
    chosen = decision(host("preseed", "provisioning", accepted=False))
    assert chosen.action == "kernel" and "booting the agent" in chosen.reason
    assert "t0k" not in chosen.cmdline
