"""A host's RHEL kickstart file (anaconda, RHEL 9 syntax), rendered from its install target.

The install source is not named here: the iPXE script passes ``inst.repo=`` (a RHEL-compatible
tree the operator publishes under the boot service's files), so one kickstart fits any mirror.
Root gets a locked password and, from ``%post``, the host's SSH keys (``sshkey`` takes only one
key per user). ``%post`` runs in the installed system and seeds cloud-init (see
:mod:`plunder.boot.installer.seed`).
"""

from __future__ import annotations

from plunder.boot.installer import seed
from plunder.boot.installer.target import InstallTarget


def _network(target: InstallTarget) -> str:
    words = ["network", f"--device={target.mac}", "--onboot=yes", "--activate"]
    static = target.static
    if static is None:
        words.append("--bootproto=dhcp")
    elif static.version == 4:
        words += ["--bootproto=static", f"--ip={static.address}", f"--netmask={static.netmask}"]
        words += [f"--gateway={static.gateway}"] if static.gateway else []
    else:
        words += ["--noipv4", f"--ipv6={static.address}/{static.prefix_length}"]
        words += [f"--ipv6gateway={static.gateway}"] if static.gateway else []
    if static is not None and static.nameservers:
        words.append(f"--nameserver={','.join(static.nameservers)}")
    words.append(f"--hostname={target.fqdn}")
    return " ".join(words)


def render_kickstart(target: InstallTarget) -> str:
    """The kickstart file of ``target``."""
    disk = target.disk.removeprefix("/dev/")
    lines = [
        f"# plunder: kickstart of {target.fqdn} ({target.mac}); rendered per request, do not edit",
        "text",
        "lang en_US.UTF-8",
        "keyboard --vckeymap=us",
        "timezone Etc/UTC --utc",
        _network(target),
        "rootpw --lock",
        f"ignoredisk --only-use={disk}",
        "zerombr",
        f"clearpart --all --initlabel --drives={disk}",
        "autopart --type=plain --nohome",
        f"bootloader --boot-drive={disk}",
        "firstboot --disabled",
        "reboot",
        "",
        "%packages",
        "@^minimal-environment",
        "cloud-init",
        "openssh-server",
        "curl",
        "%end",
        "",
        "%post --erroronfail",
        "set -e",
        *seed.ssh_commands(target, seed.CURL),
        *seed.seed_commands(target, seed.CURL),
        # SELinux labels for what %post wrote (the files inherit the wrong ones otherwise)
        "restorecon -R /root /var/lib/cloud",
        "%end",
    ]
    return "\n".join(lines) + "\n"
