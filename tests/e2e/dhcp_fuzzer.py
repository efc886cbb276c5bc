"""Throw malformed DHCP and TFTP packets at the boot service, then check it still answers.

Runs *inside* the lab's network namespace (``ip netns exec <ns> python -m tests.e2e.dhcp_fuzzer``)
and sends only on the given interface, a veth port of the lab's own bridge. Bounded by count and
by time. Prints one JSON object: what was sent, and whether a well-formed DISCOVER and a TFTP
read still got their answers afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import time
from typing import Any

from scapy.all import BOOTP, DHCP, IP, UDP, Ether, Raw, conf, fuzz, srp1  # type: ignore

conf.checkIPaddr = False  # DHCP answers come from the server's address, not the broadcast one
conf.verb = 0

CLIENT_MAC = "02:00:00:00:fa:11"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "")) + b"\x00" * 10


def frame(payload: Any, src_mac: str = CLIENT_MAC) -> Any:
    return (
        Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / payload
    )


def malformed(rng: random.Random, i: int) -> Any:
    """One of several kinds of broken DHCP request, chosen by ``i``."""
    kind = i % 8
    xid = rng.getrandbits(32)
    if kind == 0:  # random bytes where BOOTP should be
        return frame(Raw(rng.randbytes(rng.randint(0, 600))))
    if kind == 1:  # BOOTP cut short
        return frame(Raw(bytes(BOOTP(op=1, xid=xid))[: rng.randint(1, 235)]))
    if kind == 2:  # scapy's field fuzzer over BOOTP and DHCP options
        return frame(fuzz(BOOTP(chaddr=mac_bytes(CLIENT_MAC))) / fuzz(DHCP()))
    if kind == 3:  # option lengths that run past the packet's end
        options = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\x5d\xff\x00" + b"\x3c\xf0abc"
        return frame(BOOTP(op=1, xid=xid, chaddr=mac_bytes(CLIENT_MAC)) / Raw(options))
    if kind == 4:  # an absurd client-arch and user class
        return frame(
            BOOTP(op=1, xid=xid, chaddr=mac_bytes(CLIENT_MAC))
            / DHCP(
                options=[
                    ("message-type", "discover"),
                    (93, b"\xff\xff"),
                    (77, rng.randbytes(255)),
                    "end",
                ]
            )
        )
    if kind == 5:  # option overload pointing at garbage file/sname fields
        return frame(
            BOOTP(
                op=1,
                xid=xid,
                chaddr=mac_bytes(CLIENT_MAC),
                file=rng.randbytes(128),
                sname=rng.randbytes(64),
            )
            / DHCP(options=[("message-type", "request"), (52, b"\x03"), "end"])
        )
    if kind == 6:  # a reply (op 2) sent to the server, with a hardware length of 255
        return frame(BOOTP(op=2, hlen=255, xid=xid) / DHCP(options=[("message-type", "offer")]))
    return frame(BOOTP(op=1, xid=xid, chaddr=mac_bytes(CLIENT_MAC)) / Raw(b"\x63\x82\x53\x63"))


def tftp_garbage(rng: random.Random, server: str) -> int:
    """Malformed and hostile TFTP requests; returns how many were sent."""
    requests = [
        b"\x00\x01../../../../etc/passwd\x00octet\x00",
        b"\x00\x01" + b"A" * 600 + b"\x00octet\x00",
        b"\x00\x01undionly.kpxe",  # no terminating zeros
        b"\x00\x09junk",
        b"",
        rng.randbytes(512),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for request in requests:
            sock.sendto(request, (server, 69))
    return len(requests)


def valid_discover(iface: str) -> dict[str, Any]:
    """A well-formed BIOS PXE DISCOVER: the answer's address and boot file."""
    xid = random.getrandbits(32)
    mac = "02:00:00:00:fa:22"
    request = frame(
        BOOTP(op=1, xid=xid, chaddr=mac_bytes(mac), flags=0x8000)
        / DHCP(
            options=[
                ("message-type", "discover"),
                (93, b"\x00\x00"),
                ("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
                "end",
            ]
        ),
        src_mac=mac,
    )
    started = time.monotonic()
    answer = srp1(request, iface=iface, timeout=5)
    if answer is None or BOOTP not in answer:
        return {"answered": False}
    bootp = answer[BOOTP]
    return {
        "answered": True,
        "yiaddr": bootp.yiaddr,
        "file": bootp.file.rstrip(b"\x00").decode(errors="replace"),
        "ms": round((time.monotonic() - started) * 1000, 1),
    }


def tftp_read(server: str, name: str) -> dict[str, Any]:
    """Read the first block of ``name``; report what came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        sock.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", (server, 69))
        try:
            data, _ = sock.recvfrom(1024)
        except TimeoutError:
            return {"answered": False}
    opcode = struct.unpack("!H", data[:2])[0]
    ms = round((time.monotonic() - started) * 1000, 1)
    return {"answered": True, "opcode": opcode, "bytes": len(data) - 4, "ms": ms}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    sent = oversized = 0
    started = time.monotonic()
    link = conf.L2socket(iface=args.iface)
    try:
        while sent + oversized < args.count and time.monotonic() < deadline:
            try:
                link.send(malformed(rng, sent + oversized))
                sent += 1
            except OSError:  # larger than the link's MTU: the kernel refuses to send it
                oversized += 1
    finally:
        link.close()
    tftp_sent = tftp_garbage(rng, args.server)
    print(
        json.dumps(
            {
                "dhcp_sent": sent,
                "dhcp_oversized_not_sent": oversized,
                "dhcp_seconds": round(time.monotonic() - started, 1),
                "tftp_sent": tftp_sent,
                "discover": valid_discover(args.iface),
                "tftp_boot_file": tftp_read(args.server, "undionly.kpxe"),
                "tftp_traversal": tftp_read(args.server, "../../../../etc/passwd"),
            }
        )
    )


if __name__ == "__main__":
    main()
