"""Settings and fixtures for the whole test session.

The management plane is real: etcd + kube-apiserver built from tools/ and started once per
session (integration and end-to-end tests share it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from plunder.api.inventory import PlunderHost
from plunder.boot.service import BootService
from plunder.images import binaries
from plunder.k8s import client as k8s_client
from plunder.k8s import crds
from plunder.k8s.resources import resource_for
from plunder.lab import capi, network, processes, providers
from plunder.lab.pki import PlanePKI
from plunder.lab.plane import Plane, start_plane

# The HTTP client logs each request at INFO; failures are easier to read without them.
for _noisy in ("httpx", "httpx2"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

PLANE_FACTS: list[str] = []
"""What the session's plane reported, printed in the terminal summary."""


LAB_TESTS = "tests/e2e/"
"""Where the e2e tests are: `make test` (``-n 2``) runs them all, in order, on one xdist
worker, and the integration and unit tests on the other, beside them.

The e2e tests run emulated hosts that take the cores they are given, so two of them at once
would only slow each other (and their clusters' kubeadm); the other tests mostly wait on an API
server or a controller (29% of two cores over 13 min, measured alone), so beside the lab they
cost it little. The lab's worker runs at a lower CPU priority (tests/e2e/conftest.py), so the
timing the other tests assert is kept.
"""


class LabScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with one scope for every e2e test and one for each other test.

    (xdist's own ``--dist loadgroup`` does not group with pytest 9: it renames ``_nodeid``,
    which pytest 9 no longer reads.) The biggest scope is sent first, so one worker takes the
    e2e tests at once and the other takes the rest.
    """

    def _split_scope(self, nodeid: str) -> str:
        return LAB_TESTS if nodeid.startswith(LAB_TESTS) else nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LabScheduling:
    """With ``-n``, schedule by :class:`LabScheduling`."""
    return LabScheduling(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker, hand its plane's facts to the controller, which prints them."""
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["plane_facts"] = PLANE_FACTS


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Gather the facts a worker handed over (see :func:`pytest_sessionfinish`)."""
    PLANE_FACTS.extend(getattr(node, "workeroutput", {}).get("plane_facts", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show which kube-apiserver the integration tests ran against."""
    for fact in PLANE_FACTS:
        terminalreporter.write_line(fact)


@pytest.fixture(scope="session")
def plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Plane]:
    """A fresh etcd + kube-apiserver on loopback, for the whole session."""
    started = time.monotonic()
    running = start_plane(tmp_path_factory.mktemp("plane"))
    PLANE_FACTS.append(
        f"test plane: kube-apiserver {running.version()} at {running.server}, "
        f"ready {time.monotonic() - started:.1f} s after start"
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def kube(plane: Plane) -> Client:
    """An admin client of the plane, with this project's CRDs installed.

    The provider is recorded as ``clusterctl init`` records it, as the lab does
    (:mod:`plunder.lab.providers`).
    """
    client = k8s_client.sync_client(plane.kubeconfig)
    crds.install_plunder_crds(client)
    providers.record_plunder(client)
    return client


@pytest.fixture(scope="session")
def cluster_api_crds(kube: Client) -> list[str]:
    """Cluster API's core, kubeadm bootstrap and control-plane CRDs, from the pinned release."""
    return crds.install_crd_files(kube, binaries.cluster_api_crd_files())


def session_managers(
    what: str,
    start: Callable[[Client, Path, PlanePKI, Path], capi.ClusterAPIControllers],
    plane: Plane,
    kube: Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[capi.ClusterAPIControllers]:
    """Start controller-runtime managers (``start``) for the session, and report how fast."""
    started = time.monotonic()
    running = start(kube, plane.kubeconfig, plane.pki, tmp_path_factory.mktemp("managers"))
    PLANE_FACTS.append(f"{what}: ready {time.monotonic() - started:.1f} s after start")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def cluster_api_controllers(
    plane: Plane,
    kube: Client,
    cluster_api_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[capi.ClusterAPIControllers]:
    """Cluster API's core, kubeadm bootstrap and control-plane managers, with their webhooks."""
    yield from session_managers(
        "Cluster API controllers", capi.start_cluster_api, plane, kube, tmp_path_factory
    )


@pytest.fixture
def namespace(kube: Client) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=name)))
    yield name
    purge_namespace(kube, name)
    kube.delete(Namespace, name)


def list_when_served(kube: Client, kind: type[Any], namespace: str) -> list[Any]:
    """List ``kind`` in ``namespace``, waiting out a CRD whose storage still initializes (429).

    Empty if the kind cannot be listed (a CRD a test removed, say).
    """
    deadline = time.monotonic() + 30
    while True:
        try:
            return list(kube.list(kind, namespace=namespace))
        except ApiError as error:
            if error.status.code != 429 or time.monotonic() > deadline:
                return []
        time.sleep(0.2)


PURGED_GROUPS = ("plunder.", "cluster.x-k8s.io")
"""Groups (or their tails) whose objects a test leaves behind: ours and Cluster API's."""


def purge_namespace(kube: Client, namespace: str) -> None:
    """Delete what a test left in its namespace, finalizers and all.

    The plane has no kube-controller-manager, so deleting a namespace deletes nothing in it: the
    objects stay, and every later controller that watches all namespaces sees them. A host left
    in ``provisioning`` holds one of the 20 provisioning slots for the rest of the session (in
    the 2026-12-07 CI run, 20 such hosts stalled every later test that provisions). The test's
    controller is gone by now, so nothing would release the finalizers: they are dropped here.
    """
    for crd in kube.list(CustomResourceDefinition):
        spec = crd.spec
        if spec.scope != "Namespaced" or not any(g in spec.group for g in PURGED_GROUPS):
            continue
        version = next(v.name for v in spec.versions if v.storage)
        kind = create_namespaced_resource(spec.group, version, spec.names.kind, spec.names.plural)
        for obj in list_when_served(kube, kind, namespace):
            name = obj.metadata.name if obj.metadata else None
            if not name:
                continue
            with suppress(ApiError):
                if obj.metadata and obj.metadata.finalizers:
                    kube.patch(
                        kind,
                        name,
                        {"metadata": {"finalizers": None}},
                        namespace=namespace,
                        patch_type=PatchType.MERGE,
                    )
                kube.delete(kind, name, namespace=namespace)


@pytest.fixture(scope="session")
def kubectl(plane: Plane) -> list[str]:
    """The kubectl command line for the plane."""
    return [str(binaries.ensure_binary("kubectl")), f"--kubeconfig={plane.kubeconfig}"]


def run_kubectl(
    kubectl: list[str], *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run kubectl and return what it printed (not raising: tests look at the exit code)."""
    return subprocess.run(
        [*kubectl, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )


def create_available_host(kube: Client, namespace: str, name: str, mac: str) -> None:
    """A PlunderHost that the agent has inspected: ``available``, waiting for work."""
    hosts = resource_for(PlunderHost)
    kube.create(
        hosts.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": "PlunderHost",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"bootMACAddress": mac},
            }
        )
    )
    kube.patch(
        hosts.Status,
        name,
        {"status": {"state": "available"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def run_ok(
    argv: list[str], env: dict[str, str], stdin: str | None = None, retry_for: float = 0
) -> str:
    """Run a program as a person would (kubectl, clusterctl …); its output, or fail the test.

    ``retry_for``: seconds to try again, every 5 s, after a failure. An emulated host's API
    server, its two cores shared, times requests out now and then; a person runs kubectl again.
    """
    deadline = time.monotonic() + retry_for
    while True:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, env=env, input=stdin, timeout=120
            )
        except subprocess.TimeoutExpired as error:
            done = subprocess.CompletedProcess(argv, 1, "", f"timed out: {error}")
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


@asynccontextmanager
async def running(service: BootService) -> AsyncIterator[BootService]:
    """A boot service started, synced with the API, and stopped afterwards."""
    await service.start()
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        yield service
    finally:
        await service.stop()


@contextmanager
def provider_controller(
    kubeconfig: Path, run_dir: Path, namespace: str | None = None, *args: str
) -> Iterator[processes.Managed]:
    """`plunderctl controller` as a process (watching only ``namespace`` if given)."""
    port = processes.free_port()
    watch = ["--namespace", namespace] if namespace else []
    argv = [sys.executable, "-m", "plunder.cli.main", "controller", "--kubeconfig", str(kubeconfig)]
    argv += [*watch, *args, "--liveness-port", str(port)]
    managed = processes.start("controller", argv, run_dir)
    try:
        processes.wait_until(
            processes.http_ok(f"http://127.0.0.1:{port}/healthz"), "controller", managed
        )
        yield managed
    finally:
        processes.stop(managed.pid)


def nested(obj: Any, *path: str) -> Any:
    """A nested field of an API object or dict (None where any step is missing)."""
    value: Any = obj.to_dict() if hasattr(obj, "to_dict") else obj
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def listed(kube: Client, resource: Any, namespace: str) -> list[Any]:
    """The objects of ``resource`` in ``namespace``.

    None while the API server's watch cache of the resource (re)initializes: it answers 429
    then, right after a CRD is installed or changed.
    """
    try:
        return list(kube.list(resource, namespace=namespace))
    except ApiError as error:
        if error.status.code != 429:
            raise
        return []


def eventually(ready: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Wait for a condition on the API, polled four times a second."""
    processes.wait_until(lambda: bool(ready()), what, timeout=timeout, interval=0.25)


def plunderctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run plunderctl as a person would, with a wide terminal for its tables."""
    return subprocess.run(
        [sys.executable, "-m", "plunder.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def lab_up(folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`plunderctl lab up` in ``folder`` on free ports, so it never meets a person's lab."""
    ports = [str(processes.free_port()) for _ in range(3)]
    return plunderctl(
        "lab",
        "up",
        "--dir",
        str(folder),
        "--apiserver-port",
        ports[0],
        "--etcd-port",
        ports[1],
        "--controller-port",
        ports[2],
        *options,
    )


@dataclass
class IsolatedLab:
    """A lab on a network namespace, subnet, ports and folder of its own."""

    folder: Path
    netns: str
    subnet: IPv4Network
    up: subprocess.CompletedProcess[str]
    down: subprocess.CompletedProcess[str] | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    def hosts(self) -> list[dict[str, Any]]:
        """The VM hosts `lab up` started (hosts.json)."""
        hosts: list[dict[str, Any]] = json.loads((self.folder / "hosts.json").read_text())
        return hosts


@contextmanager
def isolated_lab(
    folder: Path, *options: str, subnet: IPv4Network | None = None, prefix: str = "plunder-e2e"
) -> Iterator[IsolatedLab]:
    """`plunderctl lab up` (a random 172.31.x.0/24 unless ``subnet``), then `lab down`, checked.

    `lab down` must leave no process of the lab's folder and no network namespace behind.
    """
    subnet = subnet or IPv4Network(f"172.31.{140 + secrets.randbelow(100)}.0/24")
    netns = f"{prefix}-{secrets.token_hex(3)}"
    address = f"{subnet.network_address + 1}/{subnet.prefixlen}"
    up = lab_up(folder, "--netns", netns, "--address", address, *options)
    lab = IsolatedLab(folder, netns, subnet, up)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield lab
    finally:
        lab.down = plunderctl("lab", "down", "--dir", str(folder))
        assert lab.down.returncode == 0, lab.down.stderr
        leftovers = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True)
        assert leftovers.stdout == "", f"lab down left processes: {leftovers.stdout}"
        assert not network.namespace_exists(netns), "lab down left the namespace"
