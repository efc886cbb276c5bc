"""Listening sockets inside a network namespace, for a service that lives outside it.

The lab's provisioning network is a namespace; the API server listens on the host's loopback.
The boot service stays in the host namespace (so it reaches the API server) and opens its HTTP
socket inside the provisioning namespace: a socket keeps the namespace it was made in. Python
3.11 has no ``os.setns``, so libc's ``setns(2)`` is called directly, on the calling thread only,
and switched back at once.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def entered(namespace: str | None) -> Iterator[None]:
    """Run the block's socket calls in ``namespace`` (``ip netns`` name); None: stay here."""
    if namespace is None:
        yield
        return
    target = os.open(Path("/run/netns") / namespace, os.O_RDONLY)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def listening_socket(address: str, port: int, namespace: str | None = None) -> socket.socket:
    """A bound, listening TCP socket on ``address:port``, inside ``namespace`` if given."""
    with entered(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(1024)
        sock.setblocking(False)
    return sock
