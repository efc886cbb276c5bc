"""The OS image's recipe: cache path, configuration files, disk layout, and seed writing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from plunder.images import osimage


def test_the_cache_path_is_keyed_by_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLUNDER_CACHE", str(tmp_path))
    path = osimage.image_path("7")
    assert path == tmp_path / "images" / "debian-12-cloudinit-7.raw"
    assert osimage.image_path() == tmp_path / "images" / (
        f"debian-12-cloudinit-{osimage.IMAGE_VERSION}.raw"
    )
    assert osimage.compressed_path(path).name == "debian-12-cloudinit-7.raw.gz"
    assert osimage.checksum_path(path).name == "debian-12-cloudinit-7.raw.sha256"


def test_a_complete_cached_image_is_not_rebuilt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLUNDER_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "")  # no debootstrap: a build attempt would fail
    raw = osimage.image_path()
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"disk")
    gz, lzo = osimage.compressed_path(raw), osimage.lzop_path(raw)
    for path, digit in ((raw, "a"), (gz, "b"), (lzo, "c")):
        path.write_bytes(b"disk")
        osimage.checksum_path(path).write_text(osimage.render_checksum(digit * 64, path))
    image = osimage.build_os_image()
    assert image == osimage.OSImage(raw, gz, lzo, "a" * 64, 4, "b" * 64, "c" * 64)


def test_checksum_sidecars_read_as_sha256sum_writes_them() -> None:
    digest = "0123456789abcdef" * 4
    text = osimage.render_checksum(digest, Path("/x/disk.raw"))
    assert text == f"{digest}  disk.raw\n"
    assert osimage.parse_checksum(text) == digest
    with pytest.raises(osimage.ImageBuildError):
        osimage.parse_checksum("not a digest\n")


def test_cloud_init_runs_two_stages_from_nocloud_only() -> None:
    config = yaml.safe_load(osimage.cloud_init_config())
    assert config["datasource_list"] == ["NoCloud", "None"]
    assert config["cloud_config_modules"] == []
    final = config["cloud_final_modules"]
    # runcmd writes its script in the final stage, before scripts-user runs it
    assert final.index("runcmd") < final.index("scripts-user")
    assert "final-message" in final
    assert {"write-files", "set_hostname", "users-groups", "growpart"} <= set(
        config["cloud_init_modules"]
    )
    assert config["system_info"]["network"]["renderers"] == ["networkd"]
    assert config["disable_network_activation"] is True
    assert config["users"] == ["root"]  # no default user (an empty list fails the schema)


def test_the_masked_units_are_the_config_stage_and_idle_work() -> None:
    assert "cloud-config.service" in osimage.MASKED_UNITS
    assert "cloud-init-local.service" not in osimage.MASKED_UNITS  # conditional instead
    assert "cloud-init.service" not in osimage.MASKED_UNITS
    assert "cloud-final.service" not in osimage.MASKED_UNITS
    assert len(set(osimage.MASKED_UNITS)) == len(osimage.MASKED_UNITS)


def test_every_wired_nic_gets_dhcp_whatever_its_name() -> None:
    text = osimage.fallback_network_config()
    assert "Name=en* eth*" in text
    assert "DHCP=yes" in text


def test_the_local_stage_runs_only_for_a_seed_network_config() -> None:
    dropin = osimage.local_stage_dropin()
    assert dropin == ("[Unit]\nConditionPathExists=/var/lib/cloud/seed/nocloud/network-config\n")


def test_extlinux_boots_the_virtio_disk_on_the_serial_console() -> None:
    text = osimage.extlinux_config()
    assert "APPEND root=/dev/vda1 ro console=ttyS0,115200" in text
    assert "LINUX /vmlinuz" in text
    assert "INITRD /initrd.img" in text
    assert "PROMPT 0" in text


def test_the_initramfs_lists_only_the_virtio_disk_drivers() -> None:
    assert "MODULES=list" in osimage.initramfs_config()
    assert osimage.initramfs_modules().split() == ["virtio_pci", "virtio_blk", "ext4"]


def test_the_mirror_is_read_from_deb822_sources() -> None:
    text = (
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert osimage.mirror_from_apt_sources([text]) == "http://mirror.example/debian"


def test_the_mirror_is_read_from_one_line_sources() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
    )
    assert osimage.mirror_from_apt_sources(["", text]) == "http://mirror.example/debian"
    assert osimage.mirror_from_apt_sources(["deb http://x/debian trixie main\n"]) is None


def test_the_mirror_can_be_set_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLUNDER_DEBIAN_MIRROR", "http://local/debian")
    assert osimage.debian_mirror(tmp_path) == "http://local/debian"
    monkeypatch.delenv("PLUNDER_DEBIAN_MIRROR")
    with pytest.raises(osimage.ImageBuildError, match="which mirror"):
        osimage.debian_mirror(tmp_path)


def test_the_mbr_has_the_bootable_root_first_and_the_esp_second() -> None:
    root = osimage.mbr_partition_entry(osimage.PARTITION_START_SECTOR, 4096)
    esp = osimage.mbr_partition_entry(
        osimage.ESP_START_SECTOR, osimage.ESP_SECTORS, osimage.ESP_TYPE, bootable=False
    )
    mbr = osimage.render_mbr(b"\xeb\xfe", [root, esp], 0x12345678)
    assert len(mbr) == 512
    assert mbr[:2] == b"\xeb\xfe"
    assert mbr[440:444] == bytes.fromhex("78563412")
    assert (mbr[446], mbr[450]) == (0x80, 0x83)  # slot 1: bootable Linux (syslinux's mbr.bin)
    assert (mbr[462], mbr[466]) == (0x00, 0xEF)  # slot 2: the EFI system partition
    assert osimage.partition_offset(mbr) == 16 << 20
    assert osimage.partition_offset(mbr, 2) == 1 << 20
    with pytest.raises(osimage.ImageBuildError, match="empty"):
        osimage.partition_offset(mbr, 3)
    with pytest.raises(osimage.ImageBuildError, match="0x55AA"):
        osimage.partition_offset(bytes(512))
    with pytest.raises(osimage.ImageBuildError):
        osimage.render_mbr(bytes(441), [root], 0)
    with pytest.raises(osimage.ImageBuildError, match="four"):
        osimage.render_mbr(b"", [root] * 5, 0)


def test_grub_on_the_esp_boots_what_extlinux_boots() -> None:
    text = osimage.grub_config()
    assert f"search --no-floppy --label --set=root {osimage.ROOT_LABEL}" in text
    assert f"linux /vmlinuz {osimage.KERNEL_CMDLINE}" in text
    assert "initrd /initrd.img" in text


def test_the_disk_is_as_small_as_its_files_and_the_filesystem_fills_it() -> None:
    used = 300 << 20
    disk = osimage.disk_bytes_for(used)
    assert disk % (16 << 20) == 0
    assert used + osimage.FREE_BYTES < disk < used * 1.2 + osimage.FREE_BYTES + (17 << 20)
    blocks = osimage.root_filesystem_blocks(disk)
    start = osimage.PARTITION_START_SECTOR * osimage.SECTOR_BYTES
    assert start + blocks * osimage.BLOCK_BYTES == disk


def test_tree_usage_counts_blocks_not_bytes(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"x")
    (tmp_path / "big").write_bytes(bytes(5000))
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to("small")
    used, entries = osimage.tree_usage(tmp_path)
    assert entries == 4
    assert used == 4096 + 8192 + 4096  # the short symlink lives in its inode


def test_debugfs_writes_each_seed_file_from_inside_the_seed_folder() -> None:
    script = osimage.debugfs_seed_commands(
        {"meta-data": Path("/tmp/s/meta-data")}, removed=["network-config"]
    )
    lines = script.splitlines()
    assert lines[0] == "cd /var/lib/cloud/seed/nocloud"
    assert "rm network-config" in lines
    assert lines.index("rm meta-data") < lines.index("write /tmp/s/meta-data meta-data")
    assert "sif meta-data mode 0100600" in lines


def _debugfs(disk: Path, request: str) -> subprocess.CompletedProcess[str]:
    offset = osimage.PARTITION_START_SECTOR * osimage.SECTOR_BYTES
    return subprocess.run(
        ["debugfs", "-R", request, f"{disk}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 16 MiB disk laid out as the image is: MBR, ext4 at 1 MiB with the empty seed folder."""
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.fail("this test needs e2fsprogs (mkfs.ext4, debugfs)")
    tree = tmp_path / "tree"
    (tree / osimage.SEED_DIR.relative_to("/")).mkdir(parents=True)
    disk = tmp_path / "disk.raw"
    sectors = (32 << 20) // osimage.SECTOR_BYTES
    start = osimage.PARTITION_START_SECTOR
    with disk.open("wb") as file:
        file.truncate(32 << 20)
        entry = osimage.mbr_partition_entry(start, sectors - start)
        file.write(osimage.render_mbr(b"", [entry], 1))
    offset = start * osimage.SECTOR_BYTES
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", f"offset={offset}", "-d", str(tree)]
        + [str(disk), str(((32 << 20) - offset) // 4096)],
        check=True,
        capture_output=True,
    )
    return disk


def test_a_seed_is_written_without_mounting(small_disk: Path) -> None:
    osimage.write_nocloud_seed(
        small_disk, "instance-id: i-1\n", "#cloud-config\n", "version: 2\nethernets: {}\n"
    )
    listing = _debugfs(small_disk, f"ls -l {osimage.SEED_DIR}").stdout
    assert "meta-data" in listing
    assert "network-config" in listing
    stat = _debugfs(small_disk, f"stat {osimage.SEED_DIR}/user-data").stdout
    assert "Mode:  0600" in stat
    assert "User:     0" in stat


def test_a_second_seed_replaces_the_first_and_can_drop_network_config(
    small_disk: Path,
) -> None:
    osimage.write_nocloud_seed(small_disk, "instance-id: i-1\n", "#cloud-config\n", "x: 1\n")
    osimage.write_nocloud_seed(small_disk, "instance-id: i-2\n", "#cloud-config\nb: 2\n", None)
    meta = _debugfs(small_disk, f"cat {osimage.SEED_DIR}/meta-data").stdout
    assert meta == "instance-id: i-2\n"
    assert "network-config" not in _debugfs(small_disk, f"ls {osimage.SEED_DIR}").stdout


def test_a_new_build_prunes_all_but_the_newest_two_versions_of_its_flavour(tmp_path: Path) -> None:
    def built(stem: str, age: int) -> Path:
        raw = tmp_path / f"{stem}.raw"
        artifacts = (raw, osimage.compressed_path(raw), osimage.lzop_path(raw))
        for artifact in artifacts:
            for path in (artifact, osimage.checksum_path(artifact)):
                path.write_text(stem)
                os.utime(path, (1_000_000 - age, 1_000_000 - age))
        return raw

    oldest = built("debian-12-kubernetes-v1.36.3-1-aaaaaaaaaa", age=300)
    older = built("debian-12-kubernetes-v1.36.3-1-bbbbbbbbbb", age=200)
    newest = built("debian-12-kubernetes-v1.36.3-1-cccccccccc", age=100)
    other_flavour = built("debian-12-cloudinit-6", age=900)

    osimage.prune_images(tmp_path, "debian-12-kubernetes")

    left = sorted(path.name for path in tmp_path.iterdir())
    assert not [name for name in left if name.startswith(oldest.stem)]
    for kept in (older, newest, other_flavour):
        assert len([name for name in left if name.startswith(kept.stem)]) == 6  # 3 files + sums
