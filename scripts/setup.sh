#!/usr/bin/env bash
# Install what this project needs on a fresh Debian machine, then build (once, cached) the
# Go programs of the management plane. Safe to run again: each step skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, by a file or program each one provides. The lab's virtual bare metal:
# QEMU (TCG), OVMF for UEFI hosts, libvirt (so BMC emulators can drive the hosts), Debian's iPXE
# builds, dnsmasq for DHCP/TFTP; wrk drives the benchmarks; Chromium tests the dashboard.
declare -A provides=(
  [python3]=python3 [python3-venv]=/usr/lib/python3*/ensurepip [git]=git [make]=make
  [iproute2]=ip [dnsmasq-base]=dnsmasq [ipxe]=/usr/lib/ipxe/undionly.kpxe
  [ipxe-qemu]=/usr/lib/ipxe/qemu/pxe-e1000.rom [qemu-system-x86]=qemu-system-x86_64
  [qemu-utils]=qemu-img [ovmf]=/usr/share/OVMF/OVMF_CODE_4M.fd
  [libvirt-daemon-system]=libvirtd [libvirt-clients]=virsh [wrk]=wrk
  [busybox-static]=/bin/busybox [shellcheck]=shellcheck [kmod]=depmod [cpio]=cpio
  [e2fsprogs]=mkfs.ext4 [debootstrap]=debootstrap [extlinux]=extlinux
  [syslinux-common]=/usr/lib/syslinux/mbr/mbr.bin [lzop]=lzop
  # the OS image's UEFI boot: GRUB on a FAT ESP, made without mounting
  [grub-efi-amd64-bin]=/usr/lib/grub/x86_64-efi/linux.mod [grub-common]=grub-mkstandalone
  [mtools]=mcopy [dosfstools]=mkfs.fat
  # BMCs: virtualbmc needs libvirt-python, which builds from source; ipmitool to poke at them.
  [libvirt-dev]=/usr/include/libvirt/libvirt.h [pkg-config]=pkg-config [gcc]=gcc [ipmitool]=ipmitool
  # the installer tests: debconf's preseed checker, GNU wget (runs a preseed's late_command)
  [debconf]=debconf-set-selections [wget]=wget
  # the node image: runc links libseccomp statically
  [libseccomp-dev]=/usr/lib/x86_64-linux-gnu/libseccomp.a
  # the dashboard's tests: a real headless browser and its WebDriver
  [chromium]=chromium [chromium-driver]=chromedriver
)
need_apt=()
for package in "${!provides[@]}"; do
  what=${provides[$package]}
  if [[ $what == /* ]]; then
    compgen -G "$what" >/dev/null || need_apt+=("$package")
  else
    command -v "$what" >/dev/null || [ -x "/usr/sbin/$what" ] || need_apt+=("$package")
  fi
done
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v go >/dev/null; then
  echo "setup: Go is needed to build etcd and kube-apiserver from the Go module proxy." >&2
  echo "       Any Go >= 1.21 will do: it fetches the toolchain tools/go.mod asks for." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

# Build (or find in the version-keyed cache) etcd, kube-apiserver and kubectl.
# Everything the lab and the tests run, built once here (each cached by version), so that no
# step later waits on a build inside its own time limit.
.venv/bin/plunderctl lab build --all "$@"
