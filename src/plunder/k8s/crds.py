"""Installing our CustomResourceDefinitions (and others') and waiting until they serve."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.admissionregistration_v1 import (
    ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
)
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from plunder.api import crdgen, policies


def apply_crds(client: Client, crds: Iterable[dict[str, Any]]) -> list[str]:
    """Server-side apply each CRD (forcing our field manager's ownership); return their names."""
    names = []
    for crd in crds:
        resource = CustomResourceDefinition.from_dict(crd)
        assert isinstance(resource, CustomResourceDefinition)  # from_dict is typed too loosely
        client.apply(resource, force=True)
        names.append(crd["metadata"]["name"])
    return names


def wait_established(client: Client, names: Iterable[str], timeout: float = 60.0) -> None:
    """Wait until every named CRD reports the Established condition."""
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        for name in list(pending):
            try:
                crd = client.get(CustomResourceDefinition, name)
            except ApiError:
                continue
            conditions = crd.status.conditions if crd.status else None
            if any(c.type == "Established" and c.status == "True" for c in conditions or ()):
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not established after {timeout:.0f}s: {sorted(pending)}")
            time.sleep(0.1)


def install_plunder_crds(client: Client) -> list[str]:
    """Apply every CRD of this project and its admission policies; wait until the CRDs serve."""
    names = apply_crds(
        client, (crdgen.custom_resource_definition(kind) for kind in crdgen.ALL_KINDS)
    )
    wait_established(client, names)
    apply_policies(client)
    return names


def apply_policies(client: Client) -> None:
    """Server-side apply the rules a CRD cannot hold (:mod:`plunder.api.policies`)."""
    for document in policies.all_policies():
        kind = document["kind"]
        if kind == "ValidatingAdmissionPolicy":
            policy = ValidatingAdmissionPolicy.from_dict(document)
            assert isinstance(policy, ValidatingAdmissionPolicy)  # from_dict is typed too loosely
            client.apply(policy, force=True)
        else:
            binding = ValidatingAdmissionPolicyBinding.from_dict(document)
            assert isinstance(binding, ValidatingAdmissionPolicyBinding)
            client.apply(binding, force=True)


def install_crd_files(client: Client, paths: Iterable[Path]) -> list[str]:
    """Apply CRD manifests from files (one CRD per file) and wait until they serve."""
    names = apply_crds(client, (yaml.safe_load(path.read_text()) for path in paths))
    wait_established(client, names)
    return names


def missing_crds(client: Client) -> list[str]:
    """The names of this project's CRDs that the API server does not have."""
    missing = []
    for kind in crdgen.ALL_KINDS:
        try:
            client.get(CustomResourceDefinition, kind.info.crd_name)
        except ApiError as error:
            if error.status.code != 404:
                raise
            missing.append(kind.info.crd_name)
    return missing
