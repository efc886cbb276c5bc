"""Emulated BMCs for the lab's virtual hosts: Redfish (sushy-tools) and IPMI (virtualbmc).

Each host gets a BMC of its own on 127.0.0.1 that drives its libvirt domain in the lab's private
libvirt, so a power-off really stops the VM and a one-time PXE boot really network-boots it.

- Redfish: one ``sushy-emulator`` per host, restricted to that domain
  (``SUSHY_EMULATOR_ALLOWED_INSTANCES``), with HTTP basic auth from a bcrypt htpasswd file, over
  https with a certificate signed by the lab's CA when one is given.
- IPMI: one ``vbmcd`` per lab (its own config, state dir and control port, so two labs never
  share one), and a ``vbmc add`` + ``vbmc start`` per host.

Hosts alternate protocols (even-numbered hosts Redfish, odd IPMI) so both are exercised. The BMC
credentials are made per lab; the emulators' files holding them are readable by root only.
Everything runs under a run dir, and :func:`stop_bmcs` needs only that dir.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import bcrypt
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from plunder.api.common import MOVE_LABEL
from plunder.api.inventory import PlunderHost
from plunder.boot import macs
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import resource_for
from plunder.lab import hypervisor, processes
from plunder.lab.pki import PlanePKI, issue_serving_certificate

Protocol = Literal["redfish", "ipmi"]
USERNAME = "admin"
VBMCD = "vbmcd"
BMCS_FACTS = "bmcs.json"


@dataclass(frozen=True)
class TLSFiles:
    """A serving certificate and key for an https BMC, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class EmulatedBMC:
    """One host's BMC as a PlunderHost's ``spec.bmc`` names it."""

    domain: str
    protocol: Protocol
    port: int
    address: str


def protocol_for(index: int) -> Protocol:
    """Host ``index`` (0-based)'s protocol: the 1st, 3rd, … Redfish; the 2nd, 4th, … IPMI."""
    return "redfish" if index % 2 == 0 else "ipmi"


def new_password() -> str:
    """A random BMC password for one lab."""
    return secrets.token_urlsafe(18)


def _private_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
    return path


def start_redfish(
    run_dir: Path,
    libvirt_uri: str,
    domain: str,
    password: str,
    tls: TLSFiles | None = None,
    port: int | None = None,
) -> EmulatedBMC:
    """Start a sushy-emulator for ``domain`` only, on 127.0.0.1.

    Args:
        run_dir: Where its config, log and pid file go.
        libvirt_uri: The lab's libvirt.
        domain: The libvirt domain (and Redfish system id) it drives.
        password: The password of user ``admin``.
        tls: Serve https with these files (None: plain http).
        port: Its port (None: a free one).

    Returns:
        The BMC, once it answers.
    """
    port = port or processes.free_port()
    name = f"redfish-{domain}"
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd = _private_file(run_dir / f"{name}.htpasswd", f"{USERNAME}:{digest}\n")
    config = {
        "SUSHY_EMULATOR_LISTEN_IP": "127.0.0.1",
        "SUSHY_EMULATOR_LISTEN_PORT": port,
        "SUSHY_EMULATOR_LIBVIRT_URI": libvirt_uri,
        # sushy-tools redirects a system's name to its UUID: allow both, and nothing else.
        "SUSHY_EMULATOR_ALLOWED_INSTANCES": [
            domain,
            hypervisor.virsh(libvirt_uri, "domuuid", domain).strip(),
        ],
        "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
        "SUSHY_EMULATOR_STATE_DIR": str(run_dir / f"{name}.state"),
        # BootSourceOverrideMode would need a firmware path per mode; lab hosts keep theirs.
        "SUSHY_EMULATOR_BOOT_LOADER_MAP": {},
    }
    if tls is not None:
        config |= {"SUSHY_EMULATOR_SSL_CERT": str(tls.cert), "SUSHY_EMULATOR_SSL_KEY": str(tls.key)}
    config_file = _private_file(
        run_dir / f"{name}.conf",
        "".join(f"{key} = {value!r}\n" for key, value in config.items()),
    )
    emulator = processes.start(
        name,
        [sys.executable, "-m", "sushy_tools.emulator.main", "--config", str(config_file)],
        run_dir,
    )
    scheme = "redfish" if tls is not None else "redfish+http"
    bmc = EmulatedBMC(
        domain, "redfish", port, f"{scheme}://127.0.0.1:{port}/redfish/v1/Systems/{domain}"
    )
    processes.wait_until(
        lambda: not processes.port_is_free(port), f"Redfish BMC of {domain}", emulator, timeout=30
    )
    return bmc


def _vbmc_env(run_dir: Path) -> dict[str, str]:
    return {"VIRTUALBMC_CONFIG": str(run_dir / "vbmc" / "virtualbmc.conf")}


def start_vbmcd(run_dir: Path) -> processes.Managed:
    """Start this lab's own virtualbmc daemon (its config, state and control port)."""
    home = run_dir / "vbmc"
    (home / "bmcs").mkdir(parents=True, exist_ok=True, mode=0o700)
    control_port = processes.free_port()
    (home / "virtualbmc.conf").write_text(
        "[default]\n"
        f"config_dir = {home / 'bmcs'}\n"
        f"pid_file = {home / 'master.pid'}\n"
        f"server_port = {control_port}\n"
        "server_response_timeout = 10000\n"
    )
    daemon = processes.start(
        VBMCD,
        [sys.executable, "-m", "plunder.lab.vbmcd", "--foreground"],  # one-time boot fix
        run_dir,
        env=_vbmc_env(run_dir),
    )
    processes.wait_until(
        lambda: not processes.port_is_free(control_port), "vbmcd", daemon, timeout=30
    )
    return daemon


def _vbmc(run_dir: Path, *args: str) -> None:
    result = subprocess.run(  # noqa: S603 - argv is built here
        [sys.executable, "-m", "virtualbmc.cmd.vbmc", "--no-daemon", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **_vbmc_env(run_dir)},
        timeout=60,
    )
    if result.returncode != 0:
        raise processes.StartupError(f"vbmc {args[0]} {args[1]}: {result.stderr.strip()[-500:]}")


def start_ipmi(
    run_dir: Path, libvirt_uri: str, domain: str, password: str, port: int | None = None
) -> EmulatedBMC:
    """Add and start a virtual IPMI BMC for ``domain`` on 127.0.0.1 (vbmcd must run)."""
    port = port or processes.free_port()
    _vbmc(
        run_dir,
        "add",
        domain,
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        "--username",
        USERNAME,
        "--password",
        password,
        "--libvirt-uri",
        libvirt_uri,
    )
    _vbmc(run_dir, "start", domain)
    return EmulatedBMC(domain, "ipmi", port, f"ipmi://127.0.0.1:{port}")


def start_bmcs(
    run_dir: Path,
    libvirt_uri: str,
    domains: list[str],
    password: str,
    tls: TLSFiles | None = None,
) -> list[EmulatedBMC]:
    """A BMC for each domain, protocols alternating; recorded in ``run_dir/bmcs.json``."""
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bmcs = []
    for index, domain in enumerate(domains):
        if protocol_for(index) == "redfish":
            bmcs.append(start_redfish(run_dir, libvirt_uri, domain, password, tls))
        else:
            if processes.recorded_pid(run_dir, VBMCD) is None:
                start_vbmcd(run_dir)
            bmcs.append(start_ipmi(run_dir, libvirt_uri, domain, password))
    record_bmcs(run_dir, bmcs)
    return bmcs


def record_bmcs(run_dir: Path, bmcs: list[EmulatedBMC]) -> None:
    """Write what :func:`recorded_bmcs` reads (and :func:`stop_bmcs` stops)."""
    (run_dir / BMCS_FACTS).write_text(json.dumps([asdict(bmc) for bmc in bmcs], indent=1))


def recorded_bmcs(run_dir: Path) -> list[EmulatedBMC]:
    """The BMCs :func:`start_bmcs` recorded (empty if none)."""
    try:
        facts = json.loads((run_dir / BMCS_FACTS).read_text())
    except FileNotFoundError:
        return []
    return [EmulatedBMC(**fact) for fact in facts]


def bmc_states(run_dir: Path) -> dict[str, int | None]:
    """Each BMC's serving process id (vbmcd's for IPMI), or None where it does not run."""
    return {
        f"bmc {bmc.domain} ({bmc.address})": processes.recorded_pid(
            run_dir, f"redfish-{bmc.domain}" if bmc.protocol == "redfish" else VBMCD
        )
        for bmc in recorded_bmcs(run_dir)
    }


def stop_bmcs(run_dir: Path) -> bool:
    """Stop every BMC of ``run_dir``; False if none was running."""
    names = [f"redfish-{bmc.domain}" for bmc in recorded_bmcs(run_dir)]
    stopped = [processes.stop_recorded(run_dir, name) for name in [*names, VBMCD]]
    return any(stopped)


CREDENTIALS_SECRET = "lab-bmc-credentials"
"""The Secret (namespace ``default``) the lab's PlunderHosts name as their BMC credentials."""


def start_lab_bmcs(
    lab_dir: Path, libvirt_uri: str, hosts: list[dict[str, Any]], kubeconfig: Path
) -> list[EmulatedBMC]:
    """Give each lab host a BMC, and its PlunderHost the BMC's settings.

    Redfish BMCs serve https with a certificate of the plane's CA; the credentials Secret carries
    that CA as ``ca.crt``, so certificate verification stays on. A host the boot service has
    already discovered gets ``spec.bmc`` added; one not yet seen is created with its MAC and BMC.
    Both are accepted (``spec.accepted``): they are the lab's own.

    Args:
        lab_dir: The lab's folder (the BMCs run under ``bmc/``; the plane's CA is in ``pki/``).
        libvirt_uri: The lab's libvirt.
        hosts: The hosts, each with its ``name`` (libvirt domain) and ``mac``.
        kubeconfig: The plane's kubeconfig.
    """
    run_dir = lab_dir / "bmc"
    pki = PlanePKI(lab_dir / "pki")
    served = issue_serving_certificate(pki, run_dir / "tls", "plunder-lab-bmc")
    tls = TLSFiles(served / "tls.crt", served / "tls.key", pki.ca_cert)
    password = new_password()
    bmcs = start_bmcs(run_dir, libvirt_uri, [host["name"] for host in hosts], password, tls)
    client = k8s_client.sync_client(kubeconfig, field_manager="plunder-lab")
    client.apply(
        Secret(
            # clusterctl move takes it along with the hosts that name it (MOVE_LABEL).
            metadata=ObjectMeta(
                name=CREDENTIALS_SECRET, namespace="default", labels={MOVE_LABEL: ""}
            ),
            stringData={
                "username": USERNAME,
                "password": password,
                "ca.crt": pki.ca_cert.read_text(),
            },
        )
    )
    for host, emulated in zip(hosts, bmcs, strict=True):
        client.apply(
            resource_for(PlunderHost)(
                metadata=ObjectMeta(name=macs.host_name(host["mac"]), namespace="default"),
                spec={
                    "bootMACAddress": host["mac"],
                    "bmc": {"address": emulated.address, "credentialsName": CREDENTIALS_SECRET},
                    # The lab's own hardware, enrolled with its BMC: accepted, as a person
                    # accepts the servers they racked (unknown MACs still wait for it).
                    "accepted": True,
                },
            ),
            force=True,
        )
    return bmcs
