"""Another client on the lab's provisioning network, after a victim host's bootstrap data.

Runs *inside* the lab's network namespace (``ip netns exec <ns> python -m tests.e2e.attacker``)
from an address of its own on the lab's bridge, while the victim host provisions. It knows what
anyone on that network knows: the boot service's address and the victim's MAC. It tries what
the review of issue #12 found worked before: take a token from the victim's iPXE script, get one
from the agent's lookup, read the bootstrap data (no token, a guessed one, one taken from the
script), and forge the agent's progress and the installed OS's phone-home. Prints one JSON
object: each try's HTTP status, and whether anything it got back held the ``--secret`` mark.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import urllib.error
import urllib.request
from typing import Any

TOKEN = re.compile(r"\b[0-9a-f]{64}\b")


def call(
    base: str, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, str]:
    """One request; its status and body (an HTTP error's too)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)  # noqa: S310
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the lab's
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def attack(base: str, mac: str, secret: str) -> dict[str, Any]:
    """Every try, in order; what each answered, and what leaked."""
    tries: dict[str, int] = {}
    leaked: list[str] = []

    def attempt(
        name: str, method: str, path: str, token: str | None = None, body: Any = None
    ) -> str:
        status, text = call(base, method, path, token, body)
        tries[name] = status
        if secret in text:
            leaked.append(name)
        return text

    script = attempt("iPXE script", "GET", f"/boot.ipxe?mac={mac}")
    from_script = TOKEN.findall(script)
    looked_up = attempt("agent lookup", "POST", f"/agent/v1/{mac}/lookup", body={})
    from_lookup = TOKEN.findall(looked_up)
    guessed = secrets.token_hex(32)
    candidates = {"no token": None, "guessed token": guessed}
    candidates |= {f"token from the script {i}": t for i, t in enumerate(from_script)}
    candidates |= {f"token from a lookup {i}": t for i, t in enumerate(from_lookup)}
    for label, token in candidates.items():
        for file in ("user-data", "vendor-data", "meta-data"):
            attempt(f"{file}, {label}", "GET", f"/agent/v1/{mac}/cloud-init/{file}", token)
        attempt(
            f"progress, {label}",
            "POST",
            f"/agent/v1/{mac}/status",
            token,
            {"phase": "writing", "state": "failed", "message": "forged"},
        )
        query = f"?token={token}" if token else ""  # cloud-init's phone home: in the query
        attempt(f"phone-home, {label}", "POST", f"/agent/v1/{mac}/phone-home{query}", None, {})
    return {
        "tries": tries,
        "tokens_in_script": len(from_script),
        "tokens_from_lookup": len(from_lookup),
        "leaked": leaked,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="the boot service's base URL")
    parser.add_argument("--mac", required=True, help="the victim's MAC")
    parser.add_argument("--secret", required=True, help="a mark inside the bootstrap data")
    args = parser.parse_args()
    print(json.dumps(attack(args.server, args.mac, args.secret)))


if __name__ == "__main__":
    main()
