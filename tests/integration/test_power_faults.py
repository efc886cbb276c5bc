"""BMC faults through the real controller: each becomes a condition a person can act on.

Five hosts at once, each with a broken BMC of another kind, all on loopback: a closed Redfish
port, a TCP listener that accepts and never answers (a hanging BMC), an https BMC whose
certificate no trusted CA signed, a missing credentials Secret, and an IPMI address nothing
answers. The hanging one must not hold up the others, and the password must never be logged.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes
from plunder.lab.pki import create_plane_pki
from plunder.operator import power
from plunder.reconcile import hoststate
from tests.conftest import eventually
from tests.integration.test_controller import (
    controller,  # noqa: F401 - a fixture
    controller_argv,
)

pytestmark = pytest.mark.integration

PASSWORD = "never-log-me-7f3a"  # noqa: S105 - a test password; the test checks it never leaks


@pytest.fixture
def hanging_bmc() -> Iterator[int]:
    """A TCP listener that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for connection in held:
        connection.close()


@pytest.fixture
def untrusted_tls_bmc(tmp_path: Path) -> Iterator[int]:
    """An https server whose certificate is signed by a CA nobody trusts."""
    pki = create_plane_pki(tmp_path / "untrusted-pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.serving_cert, pki.serving_key)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refuses the certificate: what the test wants

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def host_body(name: str, mac: str, address: str, secret: str = "bmc-credentials") -> Any:
    return resource_for(PlunderHost)(
        metadata=ObjectMeta(name=name),
        spec={"bootMACAddress": mac, "bmc": {"address": address, "credentialsName": secret}},
    )


def condition_of(kube: Client, namespace: str, name: str) -> dict[str, Any] | None:
    host = as_dict(kube.get(resource_for(PlunderHost), name, namespace=namespace))
    for condition in (host.get("status") or {}).get("conditions", []):
        if condition["type"] == "BMCReachable":
            found: dict[str, Any] = condition
            return found
    return None


def test_bmc_faults_become_conditions_and_a_hanging_bmc_blocks_no_one(
    controller: Any,  # noqa: F811 - the fixture
    kube: Client,
    namespace: str,
    hanging_bmc: int,
    untrusted_tls_bmc: int,
    tmp_path: Path,
) -> None:
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bmc-credentials", namespace=namespace),
            stringData={"username": "admin", "password": PASSWORD},
        )
    )
    closed = processes.free_port()
    system = "/redfish/v1/Systems/host"
    hosts = {
        "closed": (f"redfish+http://127.0.0.1:{closed}{system}", "BMCUnreachable"),
        "hanging": (f"redfish+http://127.0.0.1:{hanging_bmc}{system}", "BMCTimeout"),
        "untrusted": (f"redfish://127.0.0.1:{untrusted_tls_bmc}{system}", "BMCTLSError"),
        "ipmi-silent": (f"ipmi://127.0.0.1:{processes.free_port()}", "BMCUnreachable"),
    }
    created = time.monotonic()
    for index, (name, (address, _)) in enumerate(hosts.items()):
        kube.create(host_body(name, f"52:54:00:b0:00:{index:02x}", address), namespace=namespace)
    kube.create(
        host_body("no-secret", "52:54:00:b0:00:ff", hosts["closed"][0], secret="missing"),
        namespace=namespace,
    )
    expected = {name: reason for name, (_, reason) in hosts.items()}
    expected["no-secret"] = "BMCCredentialsMissing"

    seen: dict[str, tuple[float, dict[str, Any]]] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(expected):
        assert time.monotonic() < deadline, f"conditions so far: {seen}"
        for name in expected:
            if name not in seen and (condition := condition_of(kube, namespace, name)):
                seen[name] = (time.monotonic() - created, condition)
        time.sleep(0.2)

    for name, reason in expected.items():
        took, condition = seen[name]
        print(f"\n{name}: {condition['reason']} after {took:.1f}s: {condition['message']}")
        assert condition["status"] == "False"
        assert condition["reason"] == reason, condition
        assert PASSWORD not in condition["message"]
    assert "certificate" in seen["untrusted"][1]["message"]
    assert "missing" in seen["no-secret"][1]["message"]
    # The hanging BMC holds its host for its whole timeout; the others were not kept waiting.
    assert seen["hanging"][0] >= 9
    assert seen["closed"][0] < seen["hanging"][0] - 4
    assert seen["no-secret"][0] < seen["hanging"][0] - 4

    log = tmp_path / "controller.log"
    assert PASSWORD not in log.read_text(), "the controller logged a BMC password"


FAKE_SYSTEM = "27946b59-9e44-4fa7-8e91-f3527a1ef094"


@pytest.fixture
def fake_redfish(tmp_path: Path) -> Iterator[str]:
    """sushy-tools' Redfish emulator with its fake driver: one system, powered on, no auth."""
    config = tmp_path / "sushy.conf"
    system = {"uuid": FAKE_SYSTEM, "name": "h1", "power_state": "On", "nics": []}
    config.write_text(
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = [{system!r}]\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(tmp_path / 'sushy-state')!r}\n"
    )
    port = processes.free_port()
    log = (tmp_path / "sushy.log").open("w")
    argv = [sys.executable, "-m", "sushy_tools.emulator.main", "--fake", "--config", str(config)]
    argv += ["--interface", "127.0.0.1", "--port", str(port)]
    emulator = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/redfish/v1/Systems/{FAKE_SYSTEM}"
    processes.wait_until(
        processes.http_ok(url),
        "sushy-emulator",
        processes.Managed("sushy", emulator.pid, tmp_path / "sushy.log"),
    )
    yield url
    emulator.kill()
    emulator.wait()
    log.close()


@contextlib.contextmanager
def controller_process(
    plane: Any, tmp_path: Path, name: str, *options: str
) -> Iterator[subprocess.Popen[str]]:
    port = processes.free_port()
    log_path = tmp_path / f"{name}.log"
    with log_path.open("w") as log:
        argv = [*controller_argv(plane.kubeconfig, port), *options]
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        managed = processes.Managed(name, process.pid, log_path)
        processes.wait_until(processes.http_ok(f"http://127.0.0.1:{port}/healthz"), name, managed)
        try:
            yield process
        finally:
            process.kill()
            process.wait()


def deprovisioning_host_with_a_bmc(
    kube: Client, namespace: str, fake_redfish: str
) -> Callable[[], PlunderHost]:
    """A provisioned host with a BMC whose machine was deleted, moved to deprovisioning.

    The move is written here as the controller writes it (so nothing else was): the power cycle
    that follows is the controller's to do. Returns a reader of the host.
    """
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bmc-credentials", namespace=namespace),
            stringData={"username": "admin", "password": PASSWORD},
        )
    )
    address = fake_redfish.replace("http://", "redfish+http://")
    kube.create(host_body("h1", "52:54:00:b1:00:01", address), namespace=namespace)
    hosts = resource_for(PlunderHost)

    def host() -> PlunderHost:
        return PlunderHost.model_validate(as_dict(kube.get(hosts, "h1", namespace=namespace)))

    def write(status: dict[str, Any] | None) -> None:
        current = host()
        assert status is not None
        kube.patch(
            hosts.Status,
            "h1",
            {"metadata": {"resourceVersion": current.metadata.resource_version}, "status": status},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    write({"state": "provisioned", "firstSeen": "2026-11-25T12:00:00Z"})
    change = hoststate.controller_decision(host(), datetime.now(UTC))
    assert change.status is not None and change.status["state"] == "deprovisioning"
    write(change.status)
    return host


def power_mark(host: PlunderHost) -> str:
    """The last power wish the power loop recorded as done on the host."""
    return (host.metadata.annotations or {}).get(power.DONE_ANNOTATION, "")


def test_a_controller_killed_between_the_move_and_the_power_action_still_power_cycles(
    plane: Any, kube: Client, namespace: str, fake_redfish: str, tmp_path: Path
) -> None:
    """Deprovisioning's power cycle follows from the state: the move alone is enough."""
    host = deprovisioning_host_with_a_bmc(kube, namespace, fake_redfish)

    def system() -> dict[str, Any]:
        with urllib.request.urlopen(fake_redfish, timeout=5) as answer:
            found: dict[str, Any] = json.load(answer)
            return found

    assert system()["Boot"]["BootSourceOverrideTarget"] == "Hdd"
    with controller_process(plane, tmp_path, "controller-after-crash"):
        powered_off = False
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            now = system()
            powered_off = powered_off or now["PowerState"] == "Off"
            if powered_off and now["Boot"]["BootSourceOverrideTarget"] == "Pxe":
                break
            time.sleep(0.1)
        assert powered_off, "the host was never power-cycled for its wipe"
        assert system()["Boot"]["BootSourceOverrideTarget"] == "Pxe"

        deadline = time.monotonic() + 20
        while not power_mark(host()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert power_mark(host()).startswith("pxe-reboot deprovisioning@")


def test_a_wipe_never_reported_is_power_cycled_again_and_the_host_never_returns_unwiped(
    plane: Any, kube: Client, namespace: str, fake_redfish: str, tmp_path: Path
) -> None:
    """Past ``--deprovisioning-timeout`` with no wipe, the host is power-cycled again, warned.

    Nothing answers as the agent (its power cycle was lost, say): the host must neither wait
    for good nor go back to the pool.
    """
    host = deprovisioning_host_with_a_bmc(kube, namespace, fake_redfish)
    states: list[str] = []
    marks: set[str] = set()

    def cycled(times: int) -> Callable[[], bool]:
        def check() -> bool:
            now = host()
            states.append(hoststate.state_of(now))
            marks.add(power_mark(now))
            return len(marks - {""}) >= times

        return check

    with controller_process(plane, tmp_path, "controller", "--deprovisioning-timeout", "3"):
        eventually(cycled(1), "the first power cycle for the wipe", timeout=30)
        # the deadline is checked every 15 s at most
        eventually(cycled(2), "a second power cycle after the wipe's deadline", timeout=60)

        def warned() -> bool:
            events = kube.list(Event, namespace=namespace)
            return any(
                e.reason == "DeprovisioningRetried"
                and e.type == "Warning"
                and "power-cycling it into the agent again" in (e.message or "")
                for e in events
            )

        eventually(warned, "a DeprovisioningRetried warning")
    assert all(mark.startswith("pxe-reboot deprovisioning@") for mark in marks - {""}), marks
    assert set(states) == {"deprovisioning"}, states
