"""Container images written as OCI archives, without Docker and without a registry.

No registry is reachable from this project's machines, so the images a Kubernetes node runs
(the control plane's, kube-proxy's, CoreDNS's, pause, and a small workload image for smoke
tests) are made here from files this project builds or Debian ships, and preloaded into the
node image's containerd. Each image is one uncompressed layer: a node never downloads it, and
under emulation unpacking gzip would cost more than the bytes saved.

An archive is an OCI image layout in a tar (``oci-layout``, ``index.json``, ``blobs/sha256/``)
that also carries Docker's ``manifest.json``, so both ``ctr images import`` and tools that read
``docker save`` output take it. The image's full name (``registry.k8s.io/kube-apiserver:v1.36.3``)
is in the index's ``io.containerd.image.name`` annotation and in the Docker manifest's
``RepoTags``: kubeadm and the kubelet find it by exactly that name, with
``imagePullPolicy: Never``.

Everything is deterministic: entries are owned by root, timestamps are zero, and files are
added in sorted order, so one set of inputs gives one digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BASE_FILES: Mapping[str, str] = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n"
    ),
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": "hosts: files dns\n",
}
"""What every image holds besides its programs: user names, and name lookups through
``/etc/hosts`` first (the kubelet mounts ``/etc/hosts`` and ``/etc/resolv.conf``)."""

BASE_DIRS = ("etc", "tmp", "root", "var", "var/run", "usr", "usr/local", "usr/local/bin")


@dataclass(frozen=True)
class ImageSpec:
    """One container image: its name, its files, and how it starts.

    Attributes:
        name: The full reference, registry and tag included.
        files: Path inside the image (relative, e.g. ``usr/local/bin/etcd``) → file on this
            machine. Programs keep their mode; everything else is 0644.
        links: Symlinks inside the image: path → target.
        entrypoint: The image's ``Entrypoint`` (empty: the pod's command decides).
        cmd: The image's ``Cmd``.
        env: Extra environment besides ``PATH``.
    """

    name: str
    files: Mapping[str, Path]
    links: Mapping[str, str] = field(default_factory=dict)
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """The tag part of the name (what follows the last ``:`` after the last ``/``)."""
        last = self.name.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else "latest"


@dataclass(frozen=True)
class BuiltImage:
    """An archive written by :func:`write_archive`."""

    name: str
    path: Path
    manifest_digest: str
    layer_digest: str
    layer_bytes: int


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def layer_bytes(spec: ImageSpec) -> bytes:
    """The image's one layer: base files and folders, then its own files and links, sorted."""
    buffer = io.BytesIO()
    folders: set[str] = set(BASE_DIRS)
    for path in (*spec.files, *spec.links, *BASE_FILES):
        parents = PurePosixPath(path).parents
        folders.update(str(parent) for parent in parents if str(parent) != ".")
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in sorted(folders):
            mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(_tar_info(folder, tarfile.DIRTYPE, mode))
        contents: dict[str, tuple[bytes, int]] = {
            path: (text.encode(), 0o644) for path, text in BASE_FILES.items()
        }
        for path, source in spec.files.items():
            executable = source.stat().st_mode & 0o111
            contents[path] = (source.read_bytes(), 0o755 if executable else 0o644)
        for path in sorted(contents):
            data, mode = contents[path]
            tar.addfile(_tar_info(path, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
        for path in sorted(spec.links):
            info = _tar_info(path, tarfile.SYMTYPE, 0o777)
            info.linkname = spec.links[path]
            tar.addfile(info)
    return buffer.getvalue()


def image_config(spec: ImageSpec, diff_id: str) -> bytes:
    """The OCI image configuration (amd64/linux) for a layer with ``diff_id``."""
    env = [f"PATH={DEFAULT_PATH}", *(f"{key}={value}" for key, value in spec.env.items())]
    config: dict[str, object] = {"Env": env, "WorkingDir": "/"}
    if spec.entrypoint:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    document = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "plunder.images"}],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def write_archive(spec: ImageSpec, target: Path) -> BuiltImage:
    """Write ``spec`` as an OCI layout tar (with Docker's manifest.json too) at ``target``."""
    layer = layer_bytes(spec)
    layer_digest = _sha256(layer)
    config = image_config(spec, layer_digest)
    config_digest = _sha256(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": len(layer)}],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    manifest_digest = _sha256(manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {NAME_ANNOTATION: spec.name, REF_ANNOTATION: spec.tag},
                }
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    blob = "blobs/sha256/"
    docker_manifest = json.dumps(
        [
            {
                "Config": blob + config_digest.split(":", 1)[1],
                "RepoTags": [spec.name],
                "Layers": [blob + layer_digest.split(":", 1)[1]],
            }
        ]
    ).encode()
    entries = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": index,
        "manifest.json": docker_manifest,
        blob + layer_digest.split(":", 1)[1]: layer,
        blob + config_digest.split(":", 1)[1]: config,
        blob + manifest_digest.split(":", 1)[1]: manifest,
    }
    partial = target.with_name(f".{target.name}.partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in ("blobs", "blobs/sha256"):
            tar.addfile(_tar_info(folder, tarfile.DIRTYPE, 0o755))
        for name, data in entries.items():
            tar.addfile(_tar_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    partial.rename(target)
    return BuiltImage(spec.name, target, manifest_digest, layer_digest, len(layer))


def archive_name(image: str) -> str:
    """An archive's file name: ``registry.k8s.io/etcd:3.6.8-0`` → ``etcd_3.6.8-0.tar``."""
    return image.rsplit("/", 1)[-1].replace(":", "_") + ".tar"
