"""A real Kubernetes management plane on loopback: etcd and kube-apiserver, nothing faked.

The tests' session fixture and ``plunderctl lab up`` both start it through :func:`start_plane`;
it generates its own PKI, listens only on 127.0.0.1 and writes an admin kubeconfig.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from plunder.images import binaries
from plunder.lab import processes
from plunder.lab.pki import PlanePKI, create_plane_pki


@dataclass(frozen=True)
class PlanePorts:
    """The loopback ports of one plane."""

    etcd_client: int
    etcd_peer: int
    apiserver: int

    def all(self) -> tuple[int, ...]:
        """Every port of the plane."""
        return (self.etcd_client, self.etcd_peer, self.apiserver)

    @classmethod
    def free(cls) -> PlanePorts:
        """Ports nobody listens on now (for tests, which may run beside a lab)."""
        return cls(processes.free_port(), processes.free_port(), processes.free_port())


@dataclass(frozen=True)
class Plane:
    """A running plane: where it listens and how to reach it."""

    run_dir: Path
    ports: PlanePorts
    pki: PlanePKI
    kubeconfig: Path
    etcd: processes.Managed
    apiserver: processes.Managed

    @property
    def server(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the plane's CA and presents the admin certificate."""
        return admin_ssl_context(self.pki)

    def version(self) -> str:
        """The API server's ``gitVersion`` as it reports it on /version."""
        with urllib.request.urlopen(  # noqa: S310 - loopback URL built here
            f"{self.server}/version", timeout=5, context=self.ssl_context()
        ) as response:
            return str(json.load(response)["gitVersion"])

    def stop(self) -> None:
        """Stop the API server, then etcd."""
        processes.stop(self.apiserver.pid)
        processes.stop(self.etcd.pid)


def admin_ssl_context(pki: PlanePKI) -> ssl.SSLContext:
    """A client TLS context that trusts the plane's CA and presents the admin certificate."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def write_kubeconfig(path: Path, server: str, pki: PlanePKI, name: str = "plunder-lab") -> None:
    """An admin kubeconfig with the certificates inlined as file paths."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": f"{name}-admin",
                "user": {
                    "client-certificate": str(pki.admin_cert),
                    "client-key": str(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def etcd_argv(etcd: Path, data_dir: Path, ports: PlanePorts) -> list[str]:
    """Etcd on loopback, single member; fsync off because the data is throw-away."""
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(etcd),
        "--name=plunder",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=plunder={peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_argv(apiserver: Path, pki: PlanePKI, ports: PlanePorts) -> list[str]:
    """kube-apiserver on loopback with client-certificate auth and RBAC."""
    return [
        str(apiserver),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--allow-privileged=true",
        "--v=1",
    ]


def start_plane(run_dir: Path, ports: PlanePorts | None = None, timeout: float = 90.0) -> Plane:
    """Build (once) and start etcd and kube-apiserver; return when /readyz answers."""
    ports = ports or PlanePorts.free()
    programs = binaries.ensure_binaries(("etcd", "kube-apiserver"))
    run_dir.mkdir(parents=True, exist_ok=True)
    pki = create_plane_pki(run_dir / "pki")

    etcd = processes.start(
        "etcd", etcd_argv(programs["etcd"], run_dir / "etcd-data", ports), run_dir
    )
    processes.wait_until(
        processes.http_ok(f"http://127.0.0.1:{ports.etcd_client}/health"), "etcd", etcd, timeout
    )
    apiserver = _start_apiserver(programs["kube-apiserver"], run_dir, pki, ports)
    kubeconfig = run_dir / "kubeconfig"
    write_kubeconfig(kubeconfig, f"https://127.0.0.1:{ports.apiserver}", pki)
    plane = Plane(run_dir, ports, pki, kubeconfig, etcd, apiserver)
    try:
        _wait_ready(plane, timeout)
    except processes.StartupError:
        plane.stop()
        raise
    return plane


def restart_apiserver(plane: Plane, timeout: float = 90.0) -> Plane:
    """Stop the API server (SIGTERM) and start it again on its port, etcd left running.

    Every object stays (it is in etcd); clients keep their kubeconfig and see their connections
    and watches end. Returns the plane with the new process: stop that one.
    """
    processes.stop(plane.apiserver.pid)
    program = binaries.ensure_binary("kube-apiserver")
    apiserver = _start_apiserver(program, plane.run_dir, plane.pki, plane.ports)
    restarted = dataclasses.replace(plane, apiserver=apiserver)
    _wait_ready(restarted, timeout)
    return restarted


def _start_apiserver(
    program: Path, run_dir: Path, pki: PlanePKI, ports: PlanePorts
) -> processes.Managed:
    return processes.start("kube-apiserver", apiserver_argv(program, pki, ports), run_dir)


def _wait_ready(plane: Plane, timeout: float) -> None:
    processes.wait_until(
        processes.http_ok(f"{plane.server}/readyz", plane.ssl_context()),
        "kube-apiserver",
        plane.apiserver,
        timeout,
    )
