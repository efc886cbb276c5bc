"""``plunderctl dashboard`` against the real plane, in a real headless browser.

The dashboard runs as a person runs it (``plunderctl dashboard --kubeconfig …``, a process of
its own); Debian's Chromium loads its pages through chromedriver (selenium). The tests write
the objects a fleet has (hosts with their phases, hardware, conditions and Events, an agent
log, a Cluster with Machines and PlunderMachines bound to hosts) and look at what the pages
show: rows and filters, timeline charts, the cluster's machines side by side, a change arriving
without a reload; and, playing the attacker, that no Secret's contents ever reach the page or
its JSON. A screenshot of each page is kept under build/artifacts/dashboard/.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Event, Secret
from lightkube.types import PatchType
from selenium import webdriver
from selenium.webdriver.support.ui import Select

from plunder.api.infrastructure import PlunderMachine
from plunder.api.inventory import PlunderHost
from plunder.boot import agentlog
from plunder.k8s import capi
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab.plane import Plane
from tests.browser import (
    click,
    get,
    headless_chromium,
    js,
    open_page,
    running_dashboard,
    screenshot,
)
from tests.conftest import eventually
from tests.integration.test_machine_world import create_capi_machine, create_cluster

pytestmark = pytest.mark.integration

HOSTS = resource_for(PlunderHost)
MACHINES = resource_for(PlunderMachine)
CLEAR_TEXT_FILTER = (
    "const f = document.getElementById('filter-text'); f.value = '';"
    " f.dispatchEvent(new Event('input'))"
)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium, driven by its chromedriver; one for the session."""
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture
def dashboard(
    plane: Plane, kube: Client, cluster_api_crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[str]:
    """``plunderctl dashboard`` for the test's namespace, as a process; its base URL."""
    with running_dashboard(plane.kubeconfig, namespace, tmp_path) as url:
        yield url


def first_event(url: str) -> str:
    """The first event the change stream sends (it stays open; read one event and leave)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        lines = []
        while line := response.readline().decode():
            if line == "\n":
                break
            lines.append(line)
        return "".join(lines)


# ------------------------------------------------------------------------------ the world


def make_host(
    kube: Client,
    namespace: str,
    name: str,
    mac: str,
    status: dict[str, Any],
    spec: dict[str, Any] | None = None,
) -> None:
    kube.create(
        HOSTS.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": "PlunderHost",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"bootMACAddress": mac, "accepted": True, **(spec or {})},
            }
        )
    )
    set_status(kube, namespace, name, status)


def set_status(kube: Client, namespace: str, name: str, status: dict[str, Any]) -> None:
    kube.patch(
        HOSTS.Status, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE
    )


def hardware(product: str, cpus: int, memory_mib: int) -> dict[str, Any]:
    return {
        "systemVendor": "QEMU",
        "productName": product,
        "cpu": {"count": cpus, "model": "QEMU Virtual CPU"},
        "memoryMiB": memory_mib,
        "disks": [{"name": "/dev/vda", "sizeBytes": 20 * 2**30, "model": "QEMU HARDDISK"}],
        "nics": [{"name": "eth0", "mac": "00:50:56:a5:11:01", "ip": "172.31.99.101"}],
    }


def provisioning(
    start: float, to_write: float, write: float | None, boot: float | None
) -> list[dict[str, Any]]:
    """A provisioning cycle's phases: claim → write → phone home (open where a length is None)."""
    writing: dict[str, Any] = {"name": "writing", "started": at(start + to_write)}
    phases: dict[str, Any] = {"name": "provisioning", "started": at(start)}
    if write is not None:
        writing["finished"] = at(start + to_write + write)
        if boot is not None:
            phases["finished"] = at(start + to_write + write + boot)
    return [phases, writing]


def condition(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at(0),
    }


def fleet(kube: Client, namespace: str) -> None:
    make_host(
        kube,
        namespace,
        "rack1-a",
        "00:50:56:a5:11:01",
        {
            "state": "available",
            "vendor": "VMware, Inc.",
            "poweredOn": True,
            "lastSeen": at(3590),
            "ipAddress": "172.31.99.101",
            "bootFirmware": "uefi",
            "hardware": hardware("Standard PC (Q35)", 4, 8192),
        },
    )
    make_host(
        kube,
        namespace,
        "rack1-b",
        "52:54:00:00:00:02",
        {
            "state": "provisioned",
            "vendor": "Realtek",
            "poweredOn": True,
            "lastSeen": at(3000),
            "hardware": hardware("Standard PC (i440FX)", 2, 4096),
            "phases": provisioning(0, 2, 30, 40),
        },
        spec={
            "consumerRef": {"kind": "PlunderMachine", "name": "worker-0", "namespace": namespace}
        },
    )
    make_host(
        kube,
        namespace,
        "rack2-c",
        "52:54:00:00:00:03",
        {"state": "error", "vendor": "Realtek", "poweredOn": False, "errorReason": "WriteFailed"},
    )


# ------------------------------------------------------------------------------ tests


def test_the_fleet_page_lists_filters_and_follows_the_hosts(
    kube: Client, namespace: str, dashboard: str, browser: webdriver.Chrome
) -> None:
    fleet(kube, namespace)
    open_page(browser, f"{dashboard}/#/")
    rows_js = (
        "return [...document.querySelectorAll('tr.host-row')]"
        ".map(r => r.dataset.name + ' ' + r.dataset.state)"
    )
    expected = {
        f"{namespace}/rack1-a available",
        f"{namespace}/rack1-b provisioned",
        f"{namespace}/rack2-c error",
    }
    eventually(lambda: set(js(browser, rows_js)) == expected, "the three hosts' rows")

    row_b = js(
        browser, f"return document.querySelector('tr[data-name=\"{namespace}/rack1-b\"]').innerText"
    )
    assert "Realtek" in row_b and "worker-0" in row_b and "2 CPU" in row_b and "on" in row_b
    chips = js(
        browser,
        "return [...document.querySelectorAll('#state-counts .chip')].map(c => c.innerText)",
    )
    assert [chip.split() for chip in chips] == [
        ["available", "1"],
        ["error", "1"],
        ["provisioned", "1"],
    ]
    assert js(browser, "return document.getElementById('problems').children.length") == 0
    screenshot(browser, "fleet")

    # Filters: by state, by vendor, by text; each narrows the rows, "all" brings them back.
    Select(browser.find_element("id", "filter-state")).select_by_value("error")
    assert js(browser, rows_js) == [f"{namespace}/rack2-c error"]
    Select(browser.find_element("id", "filter-state")).select_by_value("")
    Select(browser.find_element("id", "filter-vendor")).select_by_value("Realtek")
    assert len(js(browser, rows_js)) == 2
    Select(browser.find_element("id", "filter-vendor")).select_by_value("")
    browser.find_element("id", "filter-text").send_keys("00:50:56")
    assert js(browser, rows_js) == [f"{namespace}/rack1-a available"]
    assert (
        js(browser, "return document.getElementById('shown-count').textContent") == "1 of 3 hosts"
    )
    screenshot(browser, "fleet-filtered")

    # Live: a state change arrives through the watch, without a reload; the filter being typed
    # into keeps its text and its focus.
    js(browser, "window.stillTheSamePage = true")
    set_status(kube, namespace, "rack1-a", {"state": "provisioning"})
    eventually(
        lambda: js(browser, rows_js) == [f"{namespace}/rack1-a provisioning"],
        "rack1-a's new state on the page",
        timeout=20,
    )
    assert js(browser, "return document.activeElement.id") == "filter-text"
    assert js(browser, "return document.getElementById('filter-text').value") == "00:50:56"
    js(browser, CLEAR_TEXT_FILTER)
    eventually(lambda: len(js(browser, rows_js)) == 3, "the filters cleared")
    # A new host appears by itself too.
    make_host(kube, namespace, "rack3-d", "52:54:00:00:00:04", {"state": "discovered"})
    eventually(
        lambda: f"{namespace}/rack3-d discovered" in js(browser, rows_js),
        "the new host",
        timeout=20,
    )
    assert js(browser, "return window.stillTheSamePage") is True
    screenshot(browser, "fleet-live")


def test_a_host_page_shows_hardware_conditions_events_log_and_its_provisionings(
    kube: Client, namespace: str, dashboard: str, browser: webdriver.Chrome
) -> None:
    make_host(
        kube,
        namespace,
        "rack1-a",
        "00:50:56:a5:11:01",
        {
            "state": "provisioned",
            "vendor": "VMware, Inc.",
            "poweredOn": True,
            "lastSeen": at(600),
            "hardware": hardware("Standard PC (Q35)", 4, 8192),
            "phases": provisioning(0, 3, 45, 60),
            "conditions": [condition("Provisioned", "True", "PhonedHome", "the OS phoned home")],
        },
        spec={"bmc": {"address": "ipmi://127.0.0.1:6230", "credentialsName": "rack1-a-bmc"}},
    )
    uid = as_dict(kube.get(HOSTS, "rack1-a", namespace=namespace))["metadata"]["uid"]
    kube.create(
        Event(
            metadata=ObjectMeta(name="rack1-a.provisioned", namespace=namespace),
            involvedObject=ObjectReference(
                apiVersion=PlunderHost.info.api_version,
                kind="PlunderHost",
                name="rack1-a",
                namespace=namespace,
                uid=uid,
            ),
            reason="Provisioned",
            message="the installed OS phoned home",
            type="Normal",
            count=1,
            firstTimestamp=at(108),
            lastTimestamp=at(108),
            source=EventSource(component="plunder-boot"),
        )
    )
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(
                name=agentlog.configmap_name("rack1-a"),
                namespace=namespace,
                labels={agentlog.HOST_LABEL: "rack1-a"},
            ),
            data=agentlog.next_data(
                None, "boot-1", "plunder-agent: writing /dev/vda\nwrote 1.0 GiB\n", at(50)
            ),
        )
    )
    url = f"{dashboard}/#/host/{namespace}/rack1-a"
    open_page(browser, url)
    segments_js = (
        "return [...document.querySelectorAll('#host-timeline g.timeline-row')].map(g => "
        "[...g.querySelectorAll('rect.seg')]"
        ".map(r => r.dataset.segment + (r.classList.contains('open') ? '*' : '')))"
    )
    eventually(
        lambda: js(browser, segments_js) == [["boot", "write", "phone-home"]], "the cycle's chart"
    )
    page = js(browser, "return document.getElementById('main').innerText")
    for shown in (
        "Standard PC (Q35)",
        "4 × QEMU Virtual CPU",
        "8.0 GiB",
        "/dev/vda",
        "PhonedHome",
        "the installed OS phoned home",
        "wrote 1.0 GiB",
        "ipmi://127.0.0.1:6230",
    ):
        assert shown in page, shown
    widths = js(
        browser,
        "return [...document.querySelectorAll('#host-timeline rect.seg')]"
        ".map(r => +r.getAttribute('width'))",
    )
    assert widths[2] > widths[1] > widths[0]  # phone home 60 s, write 45 s, to the write 3 s
    screenshot(browser, "host")

    # The host is provisioned again: its phases start anew, and the page keeps the last cycle.
    js(browser, "window.stillTheSamePage = true")
    set_status(
        kube,
        namespace,
        "rack1-a",
        {"state": "provisioning", "phases": provisioning(3000, 5, None, None)},
    )
    eventually(
        lambda: js(browser, segments_js) == [["boot", "write*"], ["boot", "write", "phone-home"]],
        "the new cycle above the last one",
        timeout=20,
    )
    assert js(browser, "return window.stillTheSamePage") is True
    assert js(browser, "return document.getElementById('host-state').textContent") == "provisioning"
    screenshot(browser, "host-second-provisioning")


def bind_machine(
    kube: Client, namespace: str, machine: str, host: str, control_plane: bool
) -> None:
    """A Machine, its PlunderMachine bound to ``host``, as the controllers leave them."""
    create_capi_machine(kube, namespace, machine)
    labels = {"cluster.x-k8s.io/cluster-name": "c1"}
    if control_plane:
        labels["cluster.x-k8s.io/control-plane"] = ""
        kube.patch(
            capi.Machine,
            machine,
            {"metadata": {"labels": labels}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    kube.patch(
        capi.Machine.Status,
        machine,
        {"status": {"phase": "Running"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    kube.create(
        MACHINES.from_dict(
            {
                "apiVersion": PlunderMachine.info.api_version,
                "kind": "PlunderMachine",
                "metadata": {"name": machine, "namespace": namespace, "labels": labels},
                "spec": {
                    "image": {"url": "http://172.31.99.1:8080/files/os.raw", "checksum": "a" * 64}
                },
            }
        )
    )
    kube.patch(
        MACHINES.Status,
        machine,
        {"status": {"hostRef": {"name": host}, "state": "Provisioned"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def test_a_cluster_page_shows_its_machines_hosts_and_timelines_side_by_side(
    kube: Client, namespace: str, dashboard: str, browser: webdriver.Chrome
) -> None:
    create_cluster(kube, namespace, provisioned=False)
    # The control plane's host wrote fast; worker-1's host took long to write (a slow disk).
    hosts = {
        "controlplane": ("host-cp", "00:50:56:a5:11:01", provisioning(0, 1, 30, 30)),
        "worker-0": ("host-w0", "00:50:56:a5:11:02", provisioning(2, 2, 40, 42)),
        "worker-1": ("host-w1", "00:50:56:a5:11:03", provisioning(3, 2, 130, 41)),
    }
    for machine, (host, mac, phases) in hosts.items():
        make_host(kube, namespace, host, mac, {"state": "provisioned", "phases": phases})
        bind_machine(kube, namespace, machine, host, control_plane=machine == "controlplane")

    open_page(browser, f"{dashboard}/#/")
    eventually(
        lambda: (
            js(
                browser,
                "return [...document.querySelectorAll('tr.cluster-row')].map(r => r.innerText)",
            )
            and "3" in js(browser, "return document.querySelector('tr.cluster-row').innerText")
        ),
        "the cluster listed with its three machines",
    )
    click(browser, "tr.cluster-row a")
    rows_js = (
        "return [...document.querySelectorAll('#cluster-timeline g.timeline-row')]"
        ".map(g => g.dataset.row)"
    )
    eventually(
        lambda: (
            js(browser, rows_js)
            == ["controlplane · host-cp", "worker-0 · host-w0", "worker-1 · host-w1"]
        ),
        "the three machines' timelines",
    )
    slowest = js(
        browser,
        "return [...document.querySelectorAll('#cluster-timeline rect.slowest')]"
        ".map(r => r.parentNode.dataset.row + ' ' + r.dataset.segment)",
    )
    assert "worker-1 · host-w1 write" in slowest
    assert slowest == ["worker-1 · host-w1 write"]  # the others: within 1.5 × the median
    assert "slowest in write image: worker-1 on host-w1" in js(
        browser, "return document.getElementById('slowest').innerText"
    )
    # One clock: worker-1 started 3 s after the control plane, so its bars start further right.
    starts = js(
        browser,
        "return [...document.querySelectorAll('#cluster-timeline g.timeline-row')]"
        ".map(g => +g.querySelector('rect.seg').getAttribute('x'))",
    )
    assert starts[0] < starts[1] < starts[2]
    table = js(browser, "return document.getElementById('machines').innerText")
    assert "control plane" in table and "Running" in table and "host-w1" in table
    screenshot(browser, "cluster")

    # Following a host link from the cluster shows that host.
    click(browser, "tr[data-machine='worker-1'] a")
    eventually(
        lambda: "Host host-w1" in js(browser, "return document.querySelector('h2').innerText"),
        "worker-1's host page",
    )


def test_an_attacker_finds_no_secret_in_the_page_or_its_json(
    kube: Client, namespace: str, dashboard: str, browser: webdriver.Chrome
) -> None:
    """BMC passwords and bootstrap data are on the plane; nothing the dashboard serves has them."""
    password = f"bmc-pw-{secrets.token_hex(8)}"
    bootstrap = f"bootstrap-{secrets.token_hex(8)}"
    kube.create(
        Secret(
            metadata=ObjectMeta(name="rack1-a-bmc", namespace=namespace),
            stringData={"username": "admin", "password": password},
        )
    )
    kube.create(
        Secret(
            metadata=ObjectMeta(name="rack1-a-user-data", namespace=namespace),
            stringData={"value": f"#cloud-config\n# {bootstrap}\n", "format": "cloud-config"},
        )
    )
    create_cluster(kube, namespace, provisioned=False)
    bind_machine(kube, namespace, "controlplane", "rack1-a", control_plane=True)
    kube.patch(  # the Machine's bootstrap data: the Secret with the token
        Secret,
        "controlplane-bootstrap",
        {"stringData": {"value": f"#cloud-config\n# {bootstrap}\n"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    make_host(
        kube,
        namespace,
        "rack1-a",
        "00:50:56:a5:11:01",
        {"state": "provisioned", "phases": provisioning(0, 1, 10, 10)},
        spec={
            "bmc": {"address": "ipmi://127.0.0.1:6230", "credentialsName": "rack1-a-bmc"},
            "userData": {"name": "rack1-a-user-data"},
            "consumerRef": {
                "kind": "PlunderMachine",
                "name": "controlplane",
                "namespace": namespace,
            },
        },
    )
    eventually(lambda: "rack1-a" in get(f"{dashboard}/api/fleet")[1], "the host listed")
    eventually(
        lambda: "rack1-a" in get(f"{dashboard}/api/clusters/{namespace}/c1")[1], "the host bound"
    )

    served = {}
    for path in (
        "/",
        "/static/app.js",
        "/static/app.css",
        "/api/fleet",
        f"/api/hosts/{namespace}/rack1-a",
        f"/api/clusters/{namespace}/c1",
        "/healthz",
    ):
        status, body, headers = get(f"{dashboard}{path}")
        assert status == 200, path
        assert "default-src 'none'" in headers["Content-Security-Policy"], path
        served[path] = body
    served["/api/changes"] = first_event(f"{dashboard}/api/changes")
    assert served["/api/changes"].startswith("event: change")
    drawn = "const m = document.getElementById('main'); return m.dataset.version && m.dataset.view"
    for hash_, view in (
        ("#/", "fleet"),
        (f"#/host/{namespace}/rack1-a", "host"),
        (f"#/cluster/{namespace}/c1", "cluster"),
    ):
        open_page(browser, f"{dashboard}/{hash_}")
        eventually(lambda view=view: js(browser, drawn) == view, f"the {view} page drawn")
        served[hash_] = browser.page_source
    assert "rack1-a" in served[f"#/host/{namespace}/rack1-a"]
    for where, text in served.items():
        for secret in (
            password,
            bootstrap,
            "rack1-a-bmc",
            "rack1-a-user-data",
            "controlplane-bootstrap",
        ):
            assert secret not in text, f"{secret} in {where}"

    # Nothing is written through it, whatever the method; the plane is as it was.
    before = as_dict(kube.get(HOSTS, "rack1-a", namespace=namespace))["metadata"]["resourceVersion"]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        status, _, headers = get(f"{dashboard}/api/hosts/{namespace}/rack1-a", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    after = as_dict(kube.get(HOSTS, "rack1-a", namespace=namespace))["metadata"]["resourceVersion"]
    assert before == after
