"""A host's Debian preseed file (bookworm's debian-installer), rendered from its install target.

Loaded over the network (``url=`` on the kernel command line, with ``auto=true
priority=critical``), after the installer configured its network by DHCP: a static address is
therefore applied by running netcfg again from ``preseed/early_command``, as the installation
guide's appendix on preseeding describes. Root gets the host's SSH keys and a locked password;
no user is made. The install is a minimal Debian with openssh-server and cloud-init, which
runs the bootstrap data on first boot from the seed the late command writes (see
:mod:`plunder.boot.installer.seed`).
"""

from __future__ import annotations

from plunder.boot.installer import seed
from plunder.boot.installer.target import InstallTarget

DEBIAN_MIRROR_HOST = "deb.debian.org"
DEBIAN_MIRROR_DIRECTORY = "/debian"


def _line(owner: str, question: str, kind: str, value: str = "") -> str:
    if "\n" in value or value.endswith("\\"):
        raise ValueError(f"{question}: a preseed value is one line and does not end in '\\'")
    return f"{owner} {question} {kind} {value}".rstrip()


def _network(target: InstallTarget) -> list[str]:
    lines = [
        _line("d-i", "netcfg/choose_interface", "select", "auto"),
        _line("d-i", "netcfg/hostname", "string", target.hostname),
        _line("d-i", "netcfg/get_hostname", "string", target.hostname),
        _line("d-i", "netcfg/get_domain", "string", target.domain),
        _line("d-i", "netcfg/wireless_wep", "string"),
        _line("d-i", "hw-detect/load_firmware", "boolean", "false"),
    ]
    static = target.static
    if static is None:
        return lines
    lines += [
        _line("d-i", "netcfg/disable_autoconfig", "boolean", "true"),
        _line("d-i", "netcfg/get_ipaddress", "string", static.address),
        _line("d-i", "netcfg/get_netmask", "string", static.netmask),
        _line("d-i", "netcfg/get_gateway", "string", static.gateway or "none"),
        _line("d-i", "netcfg/get_nameservers", "string", " ".join(target.nameservers)),
        _line("d-i", "netcfg/confirm_static", "boolean", "true"),
        # The network is up (DHCP) when this file is read: configure it again, statically.
        _line("d-i", "preseed/early_command", "string", "kill-all-dhcp; netcfg"),
    ]
    return lines


def late_command(target: InstallTarget) -> str:
    """``preseed/late_command``: SSH keys, the cloud-init seed, and the report that it is done."""
    commands = [
        "set -e",
        *seed.ssh_commands(target, seed.WGET),
        *seed.seed_commands(target, seed.WGET),
    ]
    return "; ".join(commands)


def render_preseed(target: InstallTarget) -> str:
    """The preseed file of ``target``, for ``debconf-set-selections``.

    Raises:
        ValueError: A value would not fit on one preseed line.
    """
    lines = [
        f"# plunder: preseed of {target.fqdn} ({target.mac}); rendered per request, do not edit",
        _line("d-i", "debian-installer/locale", "string", "en_US.UTF-8"),
        _line("d-i", "keyboard-configuration/xkb-keymap", "select", "us"),
        *_network(target),
        _line("d-i", "mirror/country", "string", "manual"),
        _line("d-i", "mirror/http/hostname", "string", DEBIAN_MIRROR_HOST),
        _line("d-i", "mirror/http/directory", "string", DEBIAN_MIRROR_DIRECTORY),
        _line("d-i", "mirror/http/proxy", "string"),
        _line("d-i", "passwd/root-login", "boolean", "true"),
        _line("d-i", "passwd/make-user", "boolean", "false"),
        _line("d-i", "passwd/root-password-crypted", "password", "!"),
        _line("d-i", "clock-setup/utc", "boolean", "true"),
        _line("d-i", "time/zone", "string", "Etc/UTC"),
        _line("d-i", "clock-setup/ntp", "boolean", "false"),
        _line("d-i", "partman-auto/disk", "string", target.disk),
        _line("d-i", "partman-auto/method", "string", "regular"),
        _line("d-i", "partman-auto/choose_recipe", "select", "atomic"),
        _line("d-i", "partman-lvm/device_remove_lvm", "boolean", "true"),
        _line("d-i", "partman-md/device_remove_md", "boolean", "true"),
        _line("d-i", "partman-partitioning/confirm_write_new_label", "boolean", "true"),
        _line("d-i", "partman/choose_partition", "select", "finish"),
        _line("d-i", "partman/confirm", "boolean", "true"),
        _line("d-i", "partman/confirm_nooverwrite", "boolean", "true"),
        _line("d-i", "apt-setup/cdrom/set-first", "boolean", "false"),
        _line("tasksel", "tasksel/first", "multiselect", "ssh-server"),
        _line("d-i", "pkgsel/include", "string", "cloud-init openssh-server"),
        _line("d-i", "pkgsel/upgrade", "select", "none"),
        _line("popularity-contest", "popularity-contest/participate", "boolean", "false"),
        _line("d-i", "grub-installer/only_debian", "boolean", "true"),
        _line("d-i", "grub-installer/bootdev", "string", target.disk),
        _line("d-i", "finish-install/reboot_in_progress", "note"),
        _line("d-i", "preseed/late_command", "string", late_command(target)),
    ]
    return "\n".join(lines) + "\n"
