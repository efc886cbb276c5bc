"""The in-memory OS every host boots into while it is not provisioned, and its build.

``agent.sh`` is the whole agent: a POSIX shell program for busybox that reports the host's
hardware and then carries out the boot service's work (write an image, wipe, reboot).
``build`` makes the kernel and initramfs it runs in from Debian's packages, once per version.
"""
