"""The models and the API server agree on values nobody wrote by hand.

tests/schema_cases.py holds the cases a person thought of. Here each rule's field gets a few
hundred mutations of valid values (a character inserted, deleted or replaced, from an alphabet
of the characters the rules are about), and every one must meet the same verdict from the
pydantic models as from kube-apiserver's CEL: the one-definition rules of plunder.api.rules must
mean the same in RE2 and in Python.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from lightkube import Client
from pydantic import ValidationError

from plunder.api import crdgen
from plunder.api.base import Resource
from tests.conftest import run_kubectl
from tests.schema_cases import bmc, endpoint, host, image_machine, network, selector

pytestmark = pytest.mark.integration

KINDS: dict[str, type[Resource]] = {kind.info.kind: kind for kind in crdgen.ALL_KINDS}
ALPHABET = "aZ09-_.:/@[]%% \t"
MUTATIONS_PER_SEED = 40

FIELDS: dict[str, tuple[Callable[[str], dict[str, Any]], list[str]]] = {
    "endpoint host": (
        endpoint,
        ["cp.lab.example", "172.31.99.20", "fd00::20", "a.b", "10.0.0.1"],
    ),
    "BMC address": (
        bmc,
        [
            "ipmi://[fd00::9]:623",
            "ipmi://10.0.0.9:6230",
            "redfish+https://bmc.lab/redfish/v1/Systems/1",
            "redfish://[fd00::9]:8443/redfish/v1/Systems/a",
        ],
    ),
    "image URL": (
        lambda url: image_machine(url=url),
        ["http://172.31.99.1:8080/images/x.raw", "https://[fd00::1]/a%20b?c#d", "http://i.lab/x"],
    ),
    "boot MAC": (
        lambda mac: host(bootMACAddress=mac),
        ["00:50:56:a5:11:20", "02:00:00:00:00:01", "52:54:00:12:34:56"],
    ),
    "label key": (
        lambda key: selector(matchLabels={key: "r1"}),
        ["rack", "lab.example/rack", "a.b-c_d"],
    ),
    "label value": (
        lambda value: selector(matchLabels={"rack": value}),
        ["r1", "R1_a.b-c", "x"],
    ),
    "gateway": (
        lambda gateway: network(gateway=gateway),
        ["172.31.99.1", "fd00::1"],
    ),
    "Secret name": (
        lambda name: bmc("ipmi://10.0.0.9", name),
        ["bmc-node1", "a.b", "bmc1"],
    ),
}


def mutations(seed: str, rng: random.Random) -> list[str]:
    values = []
    for _ in range(MUTATIONS_PER_SEED):
        value = seed
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(value) + 1)
            match rng.randrange(3):
                case 0:
                    value = value[:at] + rng.choice(ALPHABET) + value[at:]
                case 1:
                    value = value[:at] + value[at + 1 :]
                case _:
                    value = value[:at] + rng.choice(ALPHABET) + value[at + 1 :]
        values.append(value)
    return values


def models_accept(manifest: dict[str, Any]) -> bool:
    try:
        KINDS[manifest["kind"]].model_validate(manifest)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_models_and_api_server_agree(
    kube: Client, kubectl: list[str], namespace: str, field: str
) -> None:
    build, seeds = FIELDS[field]
    rng = random.Random(f"plunder-{field}")
    values = sorted({v for seed in seeds for v in [seed, *mutations(seed, rng)]})
    manifests = []
    for index, value in enumerate(values):
        manifest = build(value)
        manifest["metadata"] = {"name": f"v{index}"}
        manifests.append(manifest)
    created = run_kubectl(
        kubectl,
        "create",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(manifests),
    )
    accepted = {int(n) for n in re.findall(r"/v(\d+) created \(server dry run\)", created.stdout)}
    refused = {int(n) for n in re.findall(r'"v(\d+)" is invalid', created.stderr)}
    assert accepted | refused == set(range(len(values))), created.stderr[-2000:]
    disagreements = [
        (values[i], "api server accepts" if i in accepted else "api server refuses")
        for i, manifest in enumerate(manifests)
        if models_accept(manifest) != (i in accepted)
    ]
    assert disagreements == []
    # The mutations must exercise both verdicts, or the test proves nothing.
    assert len(accepted) >= len(seeds) and len(refused) > len(values) // 4
