"""Throw malformed and hostile HTTP requests at the boot service, then check it still answers.

Runs *inside* the lab's network namespace (``ip netns exec <ns> python -m tests.e2e.http_fuzzer``),
as a client on the provisioning network would, and talks only to the given server. Each request
is one of several kinds of broken or hostile input, on a connection of its own: bytes that are
not HTTP, request lines and headers over the limits, bodies that lie about their length, bad
chunking, MACs that are not MACs, JSON that is not JSON or not the schema, path traversal, and
tokens that are guesses. Bounded by count and by time; ``--concurrency`` connections at once.
Prints one JSON object: how many were sent, what came back (by status class, resets, time-outs),
whether any traversal was answered with a file, and whether a well-formed iPXE script request
and ``/healthz`` were still answered afterwards, with their latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

READ_TIMEOUT_S = 5.0
"""A request that lies about its body makes the server wait: give up after this."""
VICTIM = "52:54:00:12:34:56"
TRAVERSALS = (
    "/files/../../../../etc/passwd",
    "/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/files/..%2f..%2f..%2fetc%2fpasswd",
    "/agent/v1/../../etc/passwd/lookup",
    "/installer/v1/%2e%2e%2f%2e%2e%2fetc%2fpasswd/preseed.cfg",
)


def _junk_mac(rng: random.Random) -> str:
    choices = [
        "",
        "zz:zz:zz:zz:zz:zz",
        "ff:ff:ff:ff:ff:ff",
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        ":".join(["aa"] * rng.randint(1, 40)),
        "%00%00",
        "52-54-00-12-34-56",
        "\u00e9\u00e9:00:00:00:00:00".encode().decode("latin-1"),
        rng.randbytes(12).hex(),
    ]
    return rng.choice(choices)


def _request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: boot\r\nConnection: close\r\n{headers}"
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return (head + length + "\r\n").encode("latin-1") + body


def malformed(rng: random.Random, i: int) -> bytes:
    """One of several kinds of broken or hostile request, chosen by ``i``."""
    kind = i % 12
    if kind == 0:  # bytes that are not HTTP at all
        return rng.randbytes(rng.randint(1, 2048))
    if kind == 1:  # a request line far over the server's limit
        return _request("GET", "/boot.ipxe?mac=" + "a" * rng.randint(9000, 70000))
    if kind == 2:  # a header over the limit, then many headers
        many = "".join(f"X-{n}: {'v' * 50}\r\n" for n in range(rng.randint(100, 400)))
        return _request("GET", "/healthz", headers=f"X-Big: {'b' * 20000}\r\n" + many)
    if kind == 3:  # a method and protocol the server does not speak
        return f"BREW /boot.ipxe HTCPCP/{rng.randint(0, 9)}.0\r\n\r\n".encode()
    if kind == 4:  # MACs that are not MACs, where a MAC must be
        mac = _junk_mac(rng)
        path = rng.choice(["/boot.ipxe?mac=", "/chain.ipxe?mac=", "/agent/v1/"])
        suffix = "/work" if path.startswith("/agent") else ""
        return _request("GET", path + mac + suffix)
    if kind == 5:  # JSON that is not JSON, to each agent endpoint
        endpoint = rng.choice(["lookup", "inspection", "status", "phone-home"])
        body = rng.choice([b"{", b"[]" * 500, b"\xff\xfe\x00", b'{"a":' * 300, b"null"])
        return _request("POST", f"/agent/v1/{VICTIM}/{endpoint}", body)
    if kind == 6:  # JSON of the wrong shape, with a guessed token
        body = json.dumps(
            {"token": rng.randbytes(16).hex(), "state": "provisioned", "disks": "x" * 1000}
        ).encode()
        endpoint = rng.choice(["inspection", "status", "phone-home"])
        headers = f"Authorization: Bearer {rng.randbytes(24).hex()}\r\n"
        return _request("POST", f"/agent/v1/{VICTIM}/{endpoint}", body, headers)
    if kind == 7:  # a body that claims far more than it sends
        return (
            f"POST /agent/v1/{VICTIM}/lookup HTTP/1.1\r\nHost: boot\r\n"
            f"Content-Length: {rng.randint(10**6, 10**9)}\r\n\r\n{{"
        ).encode()
    if kind == 8:  # broken chunked encoding
        return (
            f"POST /agent/v1/{VICTIM}/status HTTP/1.1\r\nHost: boot\r\n"
            "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n-1\r\n\r\n"
        ).encode()
    if kind == 9:  # path traversal out of the served files
        return _request("GET", rng.choice(TRAVERSALS))
    if kind == 10:  # a bootstrap secret asked for with a guessed token
        headers = f"Authorization: Bearer {rng.randbytes(24).hex()}\r\n"
        name = rng.choice(["user-data", "meta-data", "vendor-data", "../../etc/passwd"])
        return _request("GET", f"/agent/v1/{VICTIM}/cloud-init/{name}", headers=headers)
    # a header block with no end, and NULs in it
    return b"GET /healthz HTTP/1.1\r\nHost: b\x00oot\r\nX: \x00\x01\x02" + rng.randbytes(64)


async def send_one(server: str, port: int, payload: bytes) -> str:
    """Send ``payload`` on a new connection; the outcome: a status class, reset or timeout."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(server, port), 10)
    except (OSError, TimeoutError):
        return "connect-failed"
    try:
        writer.write(payload)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
        if not line:
            return "closed"
        parts = line.split()
        if len(parts) >= 2 and parts[1][:1].isdigit():
            status = parts[1].decode()
            if status == "200" and payload.startswith(b"GET") and b"passwd" in payload:
                rest = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT_S)
                if b"root:" in rest:
                    return "traversal-served"
            return status if status.startswith("5") else f"{status[0]}xx"  # 500: a crash
        return "not-http"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "reset"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def probe(server: str, port: int, path: str) -> dict[str, Any]:
    """A well-formed GET: its status, the first bytes of its body, and how long it took."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(server, port), 10)
        writer.write(_request("GET", path))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    except (OSError, TimeoutError) as error:
        return {"answered": False, "error": repr(error)}
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "?"
    return {
        "answered": True,
        "status": status,
        "body": body[:16].decode(errors="replace"),
        "ms": round((time.monotonic() - started) * 1000, 1),
    }


async def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    outcomes: Counter[str] = Counter()
    sent = 0
    queue = iter(range(args.count))

    async def worker() -> None:
        nonlocal sent
        for i in queue:
            if time.monotonic() > deadline:
                return
            outcomes[await send_one(args.server, args.port, malformed(rng, i))] += 1
            sent += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    return {
        "http_sent": sent,
        "http_seconds": round(elapsed, 1),
        "http_outcomes": dict(sorted(outcomes.items())),
        "boot_script": await probe(args.server, args.port, f"/boot.ipxe?mac={args.probe_mac}"),
        "healthz": await probe(args.server, args.port, "/healthz"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--probe-mac", default="02:00:00:00:fa:33")
    print(json.dumps(asyncio.run(fuzz(parser.parse_args()))))


if __name__ == "__main__":
    main()
