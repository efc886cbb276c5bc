"""The agent's build recipe and the pure parts of its script, without building or booting."""

from __future__ import annotations

import io
import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from plunder.images import agent as build

SCRIPT = build.AGENT_SCRIPT.read_text()
RECIPE = Path(build.__file__).read_text()


def test_the_version_changes_with_the_script_and_the_recipe() -> None:
    version = build.agent_version(SCRIPT, RECIPE)
    assert version == build.AGENT_VERSION
    assert build.agent_version(SCRIPT, RECIPE) == version
    assert build.agent_version(SCRIPT + "\n# a comment\n", RECIPE) != version
    assert build.agent_version(SCRIPT, RECIPE.replace('"e1000"', '"e1000e"')) != version
    assert re.fullmatch(r"[0-9.]+-[0-9]+-[0-9a-f]{16}", version), "a plain folder name"
    assert build.agent_dir().name == version
    assert build.agent_dir().parent.name == "agent"


def test_the_recipe_asks_for_network_disk_and_filesystem_drivers() -> None:
    for module in ("e1000", "virtio_net", "virtio_pci", "virtio_blk", "ahci", "sd_mod", "nvme"):
        assert module in build.MODULES
    assert "ext4" in build.MODULES
    assert build.KERNEL_RELEASE in build.KERNEL_PACKAGE


MODULES_DEP = """\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
"""
SOFTDEP = "# Soft dependencies of the modules.\nsoftdep ext4 pre: crypto-crc32c\n"
ALIASES = """\
# Aliases extracted from modules themselves.
alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk
"""


def _parsed() -> tuple[dict[str, list[str]], dict[str, list[str]], list[tuple[str, str]]]:
    return (
        build.parse_modules_dep(MODULES_DEP),
        build.parse_softdeps(SOFTDEP),
        build.parse_aliases(ALIASES),
    )


def test_module_names_are_what_modprobe_calls_them() -> None:
    assert build.module_name("kernel/drivers/nvme/host/nvme-core.ko") == "nvme_core"
    assert build.module_name("kernel/fs/ext4/ext4.ko.xz") == "ext4"


def test_soft_dependencies_are_loaded_first_and_hard_ones_are_left_to_modprobe() -> None:
    deps, softdeps, aliases = _parsed()
    assert softdeps == {"ext4": ["crypto-crc32c"]}
    order = build.modules_to_load(["virtio_blk", "ext4", "nvme"], deps, softdeps, aliases)
    assert order == ["virtio_blk", "crc32c_generic", "crc32c_intel", "ext4", "nvme"]


def test_the_module_files_include_every_dependency() -> None:
    deps, softdeps, aliases = _parsed()
    order = build.modules_to_load(["virtio_blk", "ext4", "nvme"], deps, softdeps, aliases)
    assert build.module_files(order, deps) == sorted(
        [
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/crypto/crc32c_generic.ko",
            "kernel/arch/x86/crypto/crc32c-intel.ko",
            "kernel/fs/ext4/ext4.ko",
            "kernel/lib/crc16.ko",
            "kernel/fs/mbcache.ko",
            "kernel/fs/jbd2/jbd2.ko",
            "kernel/drivers/nvme/host/nvme.ko",
            "kernel/drivers/nvme/host/nvme-core.ko",
        ]
    )


def test_a_module_missing_from_the_kernel_package_is_an_error() -> None:
    deps, softdeps, aliases = _parsed()
    with pytest.raises(build.AgentBuildError, match="e1000"):
        build.modules_to_load(["e1000"], deps, softdeps, aliases)


def _read_newc(archive: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, rdev) of each member, checking the format on the way."""
    members = []
    offset = 0
    while True:
        assert archive[offset : offset + 6] == b"070701"
        fields = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, name_size = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        assert fields[2] == fields[3] == 0, "owned by root"
        name_start = offset + 110
        name = archive[name_start : name_start + name_size - 1].decode()
        data_start = (name_start + name_size + 3) // 4 * 4
        data = archive[data_start : data_start + size]
        offset = (data_start + size + 3) // 4 * 4
        if name == "TRAILER!!!":
            assert offset == len(archive)
            return members
        members.append((name, mode, data, rdev))


def test_the_initramfs_holds_init_busybox_its_applets_and_a_console(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
    (root / "init").write_text(SCRIPT)
    modules = root / "lib" / "modules" / build.KERNEL_RELEASE / "kernel" / "fs" / "ext4"
    modules.mkdir(parents=True)
    (modules / "ext4.ko").write_bytes(b"module")
    build.link_applets(root, ["bin/sh", "usr/bin/wget", "sbin/modprobe", "linuxrc"])

    archive = io.BytesIO()
    build.write_newc(build.initramfs_entries(root), archive)
    read = _read_newc(archive.getvalue())
    members = {name: (mode, data, rdev) for name, mode, data, rdev in read}

    assert members["init"][1] == SCRIPT.encode()
    assert stat.S_ISREG(members["init"][0]) and members["init"][0] & 0o777 == 0o755
    assert members["bin/busybox"][1] == b"\x7fELF busybox"
    for applet in ("bin/sh", "usr/bin/wget", "sbin/modprobe"):
        assert stat.S_ISLNK(members[applet][0]) and members[applet][1] == b"/bin/busybox"
    assert "linuxrc" not in members
    assert f"lib/modules/{build.KERNEL_RELEASE}/kernel/fs/ext4/ext4.ko" in members
    assert stat.S_ISCHR(members["dev/console"][0]) and members["dev/console"][2] == (5, 1)
    assert stat.S_ISCHR(members["dev/null"][0])

    names = list(members)
    for name in names:  # a folder comes before what is in it
        parent = name.rpartition("/")[0]
        if parent:
            assert names.index(parent) < names.index(name), name


def test_the_archive_depends_only_on_its_contents(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "init").write_text("#!/bin/sh\n")
    first, second = io.BytesIO(), io.BytesIO()
    build.write_newc(build.initramfs_entries(root), first)
    (root / "init").touch()
    build.write_newc(build.initramfs_entries(root), second)
    assert first.getvalue() == second.getvalue()


# --- the script's pure functions, run by busybox sh where it is installed --------------------

BUSYBOX = shutil.which("busybox")
# scripts/setup.sh installs busybox-static and shellcheck: their absence fails, never skips.


def _agent_sh(snippet: str, *args: str, cwd: Path | None = None) -> str:
    assert BUSYBOX is not None
    program = f'PLUNDER_AGENT_FUNCTIONS_ONLY=1 . "{build.AGENT_SCRIPT}"\n{snippet}'
    result = subprocess.run(
        [BUSYBOX, "sh", "-c", program, "sh", *args],
        capture_output=True,
        check=True,
        cwd=cwd,
    )
    return result.stdout.decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("QEMU", "QEMU"),
        ('say "hi" \\ bye', 'say "hi" \\ bye'),
        ("tab\there\nnew line\r", "tab\there\nnew line\r"),
        ("bell\x07 esc\x1b del\x7f", "bell? esc? del?"),
        ("Ünïcode", "??n??code"),
    ],
)
def test_json_strings_are_escaped(text: str, expected: str) -> None:
    assert json.loads(_agent_sh('json_string "$1"', text)) == expected


def test_json_null_for_nothing() -> None:
    assert _agent_sh('json_string_or_null ""; echo; json_string_or_null x') == 'null\n"x"'


def test_work_values_are_read_from_key_value_lines(tmp_path: Path) -> None:
    (tmp_path / "work.txt").write_bytes(
        b"action=provision\r\nimage_url=http://s/i.raw?a=b&c=d\r\nimage_format=raw\r\n"
    )
    out = _agent_sh(
        f'RUN="{tmp_path}"; work_value action; work_value image_url; echo "[$(work_value no)]"'
    )
    assert out == "provision\nhttp://s/i.raw?a=b&c=d\n[]\n"


@pytest.mark.parametrize(
    ("answer", "seconds"),
    [
        (b"action=wait\nretry=40\n", "40"),
        (b"action=wait\r\nretry=7\r\n", "7"),
        (b"action=wait\n", "2"),
        (b"action=wait\nretry=; reboot -f\n", "2"),
        (b"action=wait\nretry=-5\n", "2"),
        (b"action=wait\nretry=99999\n", "300"),
    ],
)
def test_a_parked_agent_waits_as_long_as_the_boot_service_says_within_bounds(
    tmp_path: Path, answer: bytes, seconds: str
) -> None:
    (tmp_path / "work.txt").write_bytes(answer)
    assert _agent_sh(f'RUN="{tmp_path}"; poll_seconds') == seconds + "\n"


def test_partitions_are_named_as_the_kernel_names_them() -> None:
    out = _agent_sh("partition_path /dev/vda 1; partition_path /dev/nvme0n1 1")
    assert out == "/dev/vda1\n/dev/nvme0n1p1\n"


def test_the_script_is_shellcheck_clean(tmp_path: Path) -> None:
    dhcp_script = re.search(r"<<'EOF'\n(.*?)\nEOF\n", SCRIPT, re.DOTALL)
    assert dhcp_script
    (tmp_path / "udhcpc.sh").write_text(dhcp_script.group(1) + "\n")
    for script in (build.AGENT_SCRIPT, tmp_path / "udhcpc.sh"):
        result = subprocess.run(
            ["shellcheck", "--shell=sh", str(script)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout


def test_a_lookup_asked_again_carries_the_same_nonce_of_its_boot(tmp_path: Path) -> None:
    """The boot service answers a lookup asked again with this nonce (its answer was lost)."""
    posted = _agent_sh(
        "RUN=$1 MAC=00:50:56:a5:11:20 SERVER=http://192.0.2.1:8080\n"
        "log() { :; }\n"
        'timeout() { shift; "$@"; }\n'
        'wget() { printf "%s\\n" "$@" | grep "^mac=" >>"$RUN/posted"\n'
        '  echo token=t >"$RUN/lookup.out"; }\n'
        'lookup; rm "$RUN/token"; lookup; cat "$RUN/posted"',
        str(tmp_path),
    ).splitlines()
    assert len(posted) == 2 and posted[0] == posted[1], posted
    assert re.fullmatch(r"mac=00:50:56:a5:11:20&nonce=[0-9a-f]{32}", posted[0]), posted


def test_the_boots_log_keeps_what_the_console_shows_and_is_sent_bounded(tmp_path: Path) -> None:
    """log() writes the console and the boot's log; send_log posts its newest 64 KiB."""
    out = _agent_sh(
        "RUN=$1 MAC=00:50:56:a5:11:20 SERVER=http://192.0.2.1:8080 TOKEN=t0k3n LOG_BYTES=4096\n"
        'timeout() { shift; "$@"; }\n'
        "wget() { while [ $# -gt 1 ]; do\n"
        '  [ "$1" = --post-file ] && cp "$2" "$RUN/sent"; shift; done; echo "$1" >"$RUN/url"; }\n'
        'send_log; [ -e "$RUN/sent" ] && echo "sent without a log"\n'
        'log "inspection reported"; note "  a message"\n'
        'i=0; while [ $i -lt 2000 ]; do note "filler line $i"; i=$((i + 1)); done\n'
        'log "status done Wiped"; send_log; cat "$RUN/url"; wc -c <"$RUN/sent"',
        str(tmp_path),
    )
    lines = out.splitlines()
    assert lines[0] == "plunder-agent: inspection reported"
    assert lines[1] == "plunder-agent: status done Wiped"
    assert lines[2] == "http://192.0.2.1:8080/agent/v1/00:50:56:a5:11:20/log"
    assert int(lines[3]) == 4096, "the newest LOG_BYTES are sent"
    sent = (tmp_path / "sent").read_text()
    assert sent.endswith("] status done Wiped\n") and "t0k3n" not in sent
    kept = (tmp_path / "agent.log").read_text()
    assert len(kept) <= 4 * 4096 + 200, "the boot's own log is trimmed too"
    assert re.fullmatch(r"\[[0-9.]+\] filler line 1999", kept.splitlines()[-2])


def test_the_write_reports_its_byte_counts_while_the_image_streams(tmp_path: Path) -> None:
    """progress_monitor reads the checksum process's reads and the disk's sectors written."""
    disk = next(path.name for path in Path("/sys/class/block").iterdir())
    out = _agent_sh(
        f"RUN=$1 MAC=00:50:56:a5:11:20 SERVER=http://192.0.2.1:8080 TOKEN=t ROOT=/dev/{disk}\n"
        "PROGRESS_SECONDS=1 IMAGE_BYTES=681574400\n"
        'timeout() { shift; "$@"; }\n'
        "wget() { while [ $# -gt 1 ]; do\n"
        '  [ "$1" = --post-file ] && cat "$2" >>"$RUN/posted"; shift; done\n'
        '  echo "$1" >>"$RUN/urls"; }\n'
        'sleep 4 & reader=$!; progress_monitor "$reader"; sort -u "$RUN/urls"',
        str(tmp_path),
    )
    lines = out.splitlines()
    assert any(
        re.fullmatch(r"plunder-agent: writing: \d+ of 650 MiB downloaded, \d+ MiB written", line)
        for line in lines
    ), out
    assert lines[-1] == "http://192.0.2.1:8080/agent/v1/00:50:56:a5:11:20/progress"
    posted = (tmp_path / "posted").read_text().splitlines()
    assert len(posted) >= 3 and posted[:3][2] == "total=681574400", posted
    assert re.fullmatch(r"downloaded=\d+", posted[0]) and re.fullmatch(r"written=\d+", posted[1])


# wget as the boot service answers a status report: the lines of $RUN/answers in turn, the last
# repeated ("ok" a success, else wget's error line); each report's first line goes to
# $RUN/posted. The boot's log (sent before an outcome) is always taken.
_ANSWERS = (
    "wget() { while [ $# -gt 1 ]; do\n"
    '  [ "$1" = --post-file ] && body=$2; shift; done\n'
    '  case $1 in */log) return 0 ;; esac; head -n 1 "$body" >>"$RUN/posted"\n'
    '  calls=$((${calls:-0} + 1)); answer=$(sed -n "${calls}p" "$RUN/answers")\n'
    '  [ -n "$answer" ] || answer=$(tail -n 1 "$RUN/answers")\n'
    '  [ "$answer" = ok ] && return 0; echo "wget: $answer" >&2; return 1; }\n'
    'timeout() { shift; "$@"; }\nsleep() { :; }\n'
)


def _report(tmp_path: Path, answers: list[str], phase: str) -> tuple[str, list[str]]:
    (tmp_path / "answers").write_text("\n".join(answers) + "\n")
    out = _agent_sh(
        "RUN=$1 MAC=00:50:56:a5:11:20 SERVER=http://192.0.2.1:8080 TOKEN=t\n"
        + _ANSWERS
        + f'if report {phase} Reason "a message" 42; then echo taken; else echo "gave up"; fi',
        str(tmp_path),
    )
    posted = (tmp_path / "posted").read_text().splitlines()
    return out.splitlines()[-1], posted


def test_an_outcome_is_sent_until_the_boot_service_takes_it(tmp_path: Path) -> None:
    """A restart of the boot service or of its API server loses no "done".

    The host reboots only after the boot service recorded it; else the reboot reads as a write
    cut off (a chaos run's kube-apiserver restart of 17 s outlasted the five tries there were).
    """
    away = ["can't connect to remote host: Connection refused"] * 12
    away += ["server returned error: HTTP/1.1 500 Internal Server Error"] * 8
    said, posted = _report(tmp_path, [*away, "ok"], "done")
    assert said == "taken"
    assert posted == ["phase=done"] * 21


@pytest.mark.parametrize("refusal", ["403 Forbidden", "409 Conflict"])
def test_an_outcome_the_boot_service_refuses_is_not_sent_again(
    tmp_path: Path, refusal: str
) -> None:
    """403 (this boot's token is void) or 409 (no work under way, or a "done" recorded already)."""
    said, posted = _report(tmp_path, [f"server returned error: HTTP/1.1 {refusal}"], "done")
    assert said == "gave up"
    assert posted == ["phase=done"]


def test_progress_is_sent_once_and_may_be_missed(tmp_path: Path) -> None:
    said, posted = _report(
        tmp_path, ["can't connect to remote host: Connection refused"], "writing"
    )
    assert said == "taken"
    assert posted == ["phase=writing"]
