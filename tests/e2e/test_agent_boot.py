"""The real agent, booted in QEMU (TCG), against a fake boot service on loopback.

One boot walks the agent through every kind of work: a checksum mismatch, a metadata wipe, a
missing image, an image too big for the disk, checksum files that are missing or name another
image, a full wipe, and finally a good raw-gzip image (checked against a checksum file) of
an MBR disk with an ext4 root, which it writes, seeds with cloud-init data and reboots from
(``-no-reboot`` turns that reboot into QEMU's exit). The fake service answers the agent's
protocol, records every request, and looks at the disk file each time an action ends. The
token is not on the kernel command line: the agent looks it up, and looks it up again when the
fake refuses it once after the first wipe.

The guest reaches nothing but that service: QEMU user networking with ``restrict=on`` and a
``guestfwd`` for 10.0.2.100:8080 (and one for .101, playing an image mirror that must never see
the token). Each forward runs a small relay per connection (``cmd:``), because a ``tcp:``
chardev forward carries only the first connection.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from plunder.images import agent as build

pytestmark = pytest.mark.e2e

MAC = "52:54:00:a9:e2:01"
TOKEN = "tok-5f3e9c1d8b7a6e4f"  # noqa: S105 - a test token; the test checks it never leaks
USER_DATA = "#cloud-config\n# marker: user-data-7c41b2\nruncmd: [echo hello]\n"
META_DATA = "instance-id: i-agent-e2e\nlocal-hostname: agent-e2e\n"
MIB = 1024 * 1024
DISK_BYTES = 64 * MIB
GUEST_SERVER = "http://10.0.2.100:8080"
IMAGE_MIRROR = "http://10.0.2.101:8080"
"""Another server (the same fake, by another address) that must never see the token."""

RELAY = """\
import os, selectors, socket, sys
upstream = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
selector = selectors.DefaultSelector()
selector.register(0, selectors.EVENT_READ)
selector.register(upstream, selectors.EVENT_READ)
while True:
    for key, _ in selector.select():
        if key.fileobj == 0:
            data = os.read(0, 65536)
            if data:
                upstream.sendall(data)
            else:
                selector.unregister(0)
                upstream.shutdown(socket.SHUT_WR)
        else:
            data = upstream.recv(65536)
            if not data:
                sys.exit(0)
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
"""


@dataclass
class Status:
    phase: str
    reason: str
    message: str
    bytes: int
    head: bytes = b""
    """The disk's first MiB when the action ended (for done and failed only)."""
    second: bytes = b""
    tail: bytes = b""


@dataclass
class FakeBootService:
    """The agent's side of the boot service, with the work given out one action at a time."""

    disk: Path
    images: dict[str, bytes]
    work: list[str]
    started: float = field(default_factory=time.monotonic)
    inspection: dict[str, object] | None = None
    inspection_at: float | None = None
    statuses: list[Status] = field(default_factory=list)
    requests: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    current: str | None = None
    given: list[str] = field(default_factory=list)
    lookups: int = 0
    revoke: bool = False
    """Refuse the token once at the next work request (as when a wipe voids the old boot's)."""
    logs: list[str] = field(default_factory=list)
    """Each upload of the boot's log (POST .../log), in order."""
    progress: list[dict[str, str]] = field(default_factory=list)
    """The write's byte counts (POST .../progress), in order."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.requests.append((request.method, request.path, auth, request.host))
        if request.host == IMAGE_MIRROR.removeprefix("http://"):
            return await self.image(request)
        prefix = f"/agent/v1/{MAC}/"
        if request.path == f"{prefix}lookup" and request.method == "POST":
            self.lookups += 1  # the token is never on the command line: the agent asks for it
            return web.Response(text=f"token={TOKEN}\n")
        if auth != f"Bearer {TOKEN}":
            return web.Response(status=401)
        if request.path.startswith("/images/"):
            return await self.image(request)
        if not request.path.startswith(prefix):
            return web.Response(status=404)
        what = request.path[len(prefix) :]
        if what == "inspection" and request.method == "POST":
            assert request.content_type == "application/json"
            self.inspection = json.loads(await request.read())
            self.inspection_at = time.monotonic() - self.started
            return web.Response(status=204)
        if what == "work" and request.method == "GET":
            if self.revoke:
                self.revoke = False
                return web.Response(status=403)
            if self.current is None and self.work:
                self.current = self.work.pop(0)
                self.given.append(self.current)
            return web.Response(text=self.current or "action=wait\n")
        if what == "status" and request.method == "POST":
            assert request.content_type == "text/plain"
            fields = dict(
                line.split("=", 1) for line in (await request.text()).splitlines() if "=" in line
            )
            status = Status(
                fields["phase"], fields["reason"], fields["message"], int(fields["bytes"])
            )
            if status.phase in ("done", "failed"):
                with self.disk.open("rb") as disk:
                    status.head = disk.read(MIB)
                    status.second = disk.read(MIB)
                    disk.seek(-MIB, 2)
                    status.tail = disk.read(MIB)
                self.current = None
            if status.reason == "Wiped" and self.lookups == 1:
                self.revoke = True
            self.statuses.append(status)
            return web.Response(status=204)
        if what == "log" and request.method == "POST":
            self.logs.append(await request.text())
            return web.Response(status=204)
        if what == "progress" and request.method == "POST":
            text = await request.text()
            self.progress.append(
                dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            )
            return web.Response(status=204)
        if what == "cloud-init/meta-data":
            return web.Response(text=META_DATA)
        if what == "cloud-init/user-data":
            return web.Response(text=USER_DATA)
        return web.Response(status=404)  # network-config among them: "none"

    async def image(self, request: web.Request) -> web.StreamResponse:
        name = request.path.removeprefix("/images/")
        if name == "huge.raw":
            # Announces more than the disk holds; the agent must refuse before writing.
            response = web.StreamResponse(headers={"Content-Length": str(2 * DISK_BYTES)})
            await response.prepare(request)
            try:
                for _ in range(2 * DISK_BYTES // MIB):
                    await response.write(bytes(MIB))
            except (ConnectionResetError, RuntimeError):
                pass
            return response
        if name not in self.images:
            return web.Response(status=404)
        return web.Response(body=self.images[name], content_type="application/octet-stream")


def os_image(tmp_path: Path) -> bytes:
    """A 4 MiB disk: an MBR with one Linux partition at 1 MiB holding ext4 with /etc."""
    tree = tmp_path / "os-root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("installed-os\n")
    image = tmp_path / "os.raw"
    image.write_bytes(b"")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), "-E", f"offset={MIB}", str(image), "3072"],
        check=True,
    )
    data = bytearray(image.read_bytes())
    assert len(data) == 4 * MIB
    start, sectors = MIB // 512, 3 * MIB // 512
    entry = bytes([0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF])
    entry += start.to_bytes(4, "little") + sectors.to_bytes(4, "little")
    data[446:462] = entry
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def work(**values: str) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


def provision_work(
    image: str, checksum: str, image_format: str = "raw", server: str = GUEST_SERVER
) -> str:
    return work(
        action="provision",
        image_url=f"{server}/images/{image}",
        image_checksum=checksum,
        image_checksum_type="sha256",
        image_format=image_format,
        root_device="/dev/vda",
    )


def debugfs(partition: Path, request: str) -> str:
    result = subprocess.run(
        ["debugfs", "-R", request, str(partition)], capture_output=True, text=True, check=True
    )
    return result.stdout


async def test_agent_inspects_writes_verifies_wipes_and_seeds(tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "the agent test needs qemu-system-x86_64 (Debian package qemu-system-x86)"
    agent = await asyncio.to_thread(build.build_agent)

    blob = bytes(range(256)) * (2 * MIB // 256)  # 2 MiB, the image of the mismatch case
    disk_image = os_image(tmp_path)
    compressed = gzip.compress(disk_image)
    good_sum = hashlib.sha256(compressed).hexdigest()
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as handle:  # old contents everywhere an action must change them
        handle.truncate(DISK_BYTES)
        handle.write(b"\xaa" * 2 * MIB)
        handle.seek(DISK_BYTES - MIB)
        handle.write(b"\xaa" * MIB)

    service = FakeBootService(
        disk=disk,
        images={
            "blob.raw": blob,
            "os.raw.gz": compressed,
            # Checksum files as sha256sum writes them: one naming other images, one ours too.
            # (A file of one line is taken whatever it names, as Ironic does.)
            "other.sha256": f"{good_sum}  other.raw.gz\n{good_sum}  old.raw.gz\n".encode(),
            "SHA256SUMS": f"{'0' * 64}  blob.raw\n{good_sum.upper()} *os.raw.gz\n".encode(),
        },
        work=[
            provision_work("blob.raw", "0" * 64, server=IMAGE_MIRROR),
            work(action="wipe", wipe_mode="metadata"),
            provision_work("missing.raw", good_sum),
            provision_work("huge.raw", good_sum),
            provision_work("os.raw.gz", f"{GUEST_SERVER}/images/missing.sha256", "raw-gzip"),
            provision_work("os.raw.gz", f"{IMAGE_MIRROR}/images/other.sha256", "raw-gzip"),
            work(action="wipe", wipe_mode="full"),
            provision_work("os.raw.gz", f"{IMAGE_MIRROR}/images/SHA256SUMS", "raw-gzip"),
        ],
    )
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    serial = tmp_path / "serial.log"
    cmdline = f"console=ttyS0 quiet panic=1 plunder.server={GUEST_SERVER} plunder.mac={MAC}"
    forward = f"cmd:{sys.executable} {relay} {port}"
    argv = [
        qemu,
        *("-accel", "tcg", "-m", "512", "-nodefaults", "-no-reboot"),
        *("-machine", "graphics=off", "-display", "none", "-serial", f"file:{serial}"),
        *("-kernel", str(agent.kernel), "-initrd", str(agent.initrd), "-append", cmdline),
        "-netdev",
        "user,id=n0,restrict=on,"
        f"guestfwd=tcp:10.0.2.100:8080-{forward},guestfwd=tcp:10.0.2.101:8080-{forward}",
        *("-device", f"e1000,netdev=n0,mac={MAC},romfile="),
        *("-drive", f"file={disk},format=raw,if=none,id=d0"),
        *("-device", "virtio-blk-pci,drive=d0"),
    ]
    service.started = time.monotonic()
    process = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
    try:
        await asyncio.wait_for(process.wait(), timeout=300)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"the agent did not finish its work:\n{serial.read_text()[-3000:]}")
    finally:
        await runner.cleanup()
    elapsed = time.monotonic() - service.started
    log = serial.read_text(errors="replace")

    assert not service.work, f"work left undone: {service.work}\n{log[-3000:]}"
    assert service.inspection is not None and service.inspection_at is not None
    print(
        f"\nagent: boot to inspection {service.inspection_at:.1f} s, all work {elapsed:.1f} s "
        f"(TCG); kernel {agent.kernel.stat().st_size} B, initramfs {agent.initrd.stat().st_size} B"
    )

    # Inspection: valid JSON of the hardware QEMU emulates.
    inspection = service.inspection
    assert inspection["systemVendor"] == "QEMU"
    assert isinstance(inspection["productName"], str)
    assert isinstance(inspection["serialNumber"], str)
    cpu = inspection["cpu"]
    assert isinstance(cpu, dict) and cpu["count"] == 1 and isinstance(cpu["model"], str)
    memory = inspection["memoryMiB"]
    assert isinstance(memory, int) and 400 < memory <= 512
    assert inspection["disks"] == [
        {
            "name": "/dev/vda",
            "sizeBytes": DISK_BYTES,
            "model": None,
            "serial": None,
            "rotational": True,
        }
    ]
    nics = inspection["nics"]
    assert isinstance(nics, list)
    assert {"name": "eth0", "mac": MAC, "ip": "10.0.2.15"} in nics

    # The statuses, in order, with what each action left on the disk.
    phases = [(status.phase, status.reason) for status in service.statuses]
    assert phases == [
        ("writing", "Writing"),
        ("verifying", "Verifying"),
        ("failed", "ChecksumMismatch"),
        ("done", "Wiped"),
        ("failed", "ImageDownloadFailed"),
        ("failed", "DiskTooSmall"),
        ("failed", "ChecksumUnavailable"),
        ("failed", "ChecksumUnavailable"),
        ("done", "Wiped"),
        ("writing", "Writing"),
        ("verifying", "Verifying"),
        ("seeding", "Seeding"),
        ("done", "Provisioned"),
    ], log[-3000:]
    mismatch, wiped = service.statuses[2], service.statuses[3]
    assert mismatch.bytes == len(blob)
    assert mismatch.head == bytes(MIB), "a mismatched image must not stay bootable"
    assert mismatch.second == blob[MIB:]
    assert wiped.head == bytes(MIB) and wiped.tail == bytes(MIB)
    assert wiped.second == blob[MIB:], "a metadata wipe only touches the ends"
    unavailable = [status.message for status in service.statuses[6:8]]
    assert "missing.sha256" in unavailable[0] and "404" in unavailable[0], unavailable
    assert unavailable[1].endswith("names no os.raw.gz"), unavailable
    full_wipe = service.statuses[8]
    assert full_wipe.head == full_wipe.second == full_wipe.tail == bytes(MIB)
    assert service.statuses[-1].bytes == len(disk_image)

    # The disk holds the image: its MBR as written, its ext4 with the NoCloud seed added.
    written = disk.read_bytes()
    assert written[:MIB] == disk_image[:MIB]
    partition = tmp_path / "partition.raw"
    partition.write_bytes(written[MIB : 4 * MIB])
    seed = "/var/lib/cloud/seed/nocloud"
    assert debugfs(partition, f"cat {seed}/user-data") == USER_DATA
    assert debugfs(partition, f"cat {seed}/meta-data") == META_DATA
    assert "network-config" not in debugfs(partition, f"ls {seed}")
    assert "Mode:  0600" in debugfs(partition, f"stat {seed}/user-data")
    assert debugfs(partition, "cat /etc/hostname") == "installed-os\n"

    # Every request to the boot service carried the token, and only those; the console never
    # showed it or the user-data.
    mirror = IMAGE_MIRROR.removeprefix("http://")
    lookups = [request for request in service.requests if request[1].endswith("/lookup")]
    assert service.lookups == 2 and all(auth is None for _, _, auth, _ in lookups)
    assert "the token was refused; looking up a new one" in log
    own = [r for r in service.requests if r[3] != mirror and not r[1].endswith("/lookup")]
    assert len([request for request in own if request[1].startswith("/agent/")]) >= 10
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth, _ in own)
    # The mirror: the mismatched image (its length, then its bytes) and two checksum files.
    assert [auth for _, _, auth, host in service.requests if host == mirror] == [None] * 4
    assert TOKEN not in log
    assert "user-data-7c41b2" not in log
    assert "plunder-agent: inspection reported" in log

    # The boot's log: sent after inspection and before each outcome, the console's lines with
    # the reports' messages, never the token or the user-data; the write's counts are numbers.
    outcomes = [
        f"status {s.phase} {s.reason}" for s in service.statuses if s.phase in ("done", "failed")
    ]
    assert len(service.logs) >= 1 + len(outcomes), len(service.logs)  # plus those during writes
    assert all(any(outcome in sent for sent in service.logs) for outcome in outcomes), outcomes
    assert "inspection reported" in service.logs[0]
    last = service.logs[-1]
    assert "status done Provisioned" in last and "names no os.raw.gz" in last, last[-2000:]
    assert all(TOKEN not in sent and "user-data-7c41b2" not in sent for sent in service.logs)
    for counts in service.progress:
        assert set(counts) == {"downloaded", "written", "total"}, counts
        assert all(value == "" or value.isdigit() for value in counts.values()), counts
