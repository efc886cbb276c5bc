"""PlunderRemediation and its template: Cluster API's external remediation contract.

A MachineHealthCheck whose ``spec.remediation.templateRef`` names a PlunderRemediationTemplate
makes Cluster API create a PlunderRemediation for each Machine it finds unhealthy: in the
Machine's namespace, with the Machine's name, owned by the Machine, its spec copied from the
template's ``spec.template.spec``. Cluster API deletes it again once the Machine is healthy.
The remediation controller (``operator/remediation.py``) power-cycles the Machine's host
through its BMC up to ``retryLimit`` times, waiting ``timeout`` after each; when the tries run
out it hands the Machine back to its owner to be replaced and keeps the host out of the pool.

The fields are those of CAPM3's Metal3Remediation (strategy ``type``/``retryLimit``/``timeout``;
status ``phase``/``retryCount``/``lastRemediated``), so people who know one know the other.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from plunder.api import rules
from plunder.api.base import KubeModel, PrinterColumn, Resource, ResourceInfo
from plunder.api.common import CLUSTER_NAME_LABEL, INFRASTRUCTURE_GROUP, VERSION, Condition
from plunder.api.infrastructure import CONTRACT_LABELS
from plunder.api.rules import Enforce, Rule

RemediationPhase = Literal["Running", "Waiting", "Deleting", "Failed"]
"""Running: a reboot is due; Waiting: rebooted, waiting for the Machine to be healthy again;
Deleting: the tries ran out and the Machine was handed back to be replaced; Failed: it could not
be remediated at all (no host, no BMC)."""

DURATION = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"
"""A Go duration as Kubernetes writes them (``5m``, ``1h30m``, ``90s``, ``1.5s``, ``500ms``)."""
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")


def duration_seconds(text: str) -> float:
    """The seconds of a duration matching :data:`DURATION` (``5m`` is 300.0)."""
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))


_TIMEOUT = Rule(
    f"self.matches({rules.cel_string(DURATION)}) && duration(self) > duration('0s')",
    "spec.strategy.timeout must be a duration longer than zero, like 5m, 90s or 1h30m: how long "
    "to wait after a reboot for the Machine to be healthy again",
    lambda value: rules.matches(DURATION, value) and duration_seconds(value) > 0,
)


class RemediationStrategy(KubeModel):
    """How a host is remediated."""

    type: Literal["Reboot"] = "Reboot"
    """The remediation: Reboot (a power cycle through the host's BMC) is the one there is."""
    retry_limit: int = Field(default=1, ge=0, le=100)
    """How many times the host is rebooted before the Machine is handed back to Cluster API to be
    replaced (0: hand it back at once)."""
    timeout: Annotated[str, Enforce(_TIMEOUT)] = Field(default="5m", max_length=32)
    """How long to wait after each reboot for the Machine to be healthy again (a duration such
    as 5m), before the next try."""

    @property
    def timeout_seconds(self) -> float:
        """``timeout`` in seconds."""
        return duration_seconds(self.timeout)


class PlunderRemediationSpec(KubeModel):
    """The desired state of a PlunderRemediation."""

    strategy: RemediationStrategy = Field(default_factory=RemediationStrategy)
    """How to remediate: reboot up to retryLimit times, waiting timeout after each."""


class PlunderRemediationStatus(KubeModel):
    """The observed state of a PlunderRemediation."""

    phase: RemediationPhase | None = None
    """Running, Waiting, Deleting or Failed."""
    retry_count: int = Field(default=0, ge=0)
    """How many reboots were asked for so far."""
    last_remediated: datetime | None = None
    """When the last reboot was asked for."""
    host_ref: str | None = Field(default=None, max_length=253)
    """The PlunderHost being remediated (the Machine's PlunderMachine's host)."""
    conditions: list[Condition] | None = Field(default=None, max_length=32)
    """The remediation's conditions: Remediated (False while it runs, with why it stopped)."""


_ESCAPED_CLUSTER_LABEL = CLUSTER_NAME_LABEL.replace(".", "\\.")
_INFO_COLUMNS = (
    PrinterColumn(
        "Cluster",
        f".metadata.labels['{_ESCAPED_CLUSTER_LABEL}']",
        description="The Cluster this object belongs to",
    ),
    PrinterColumn("Phase", ".status.phase", description="Running, Waiting, Deleting or Failed"),
    PrinterColumn("Retries", ".status.retryCount", type="integer"),
    PrinterColumn("Host", ".status.hostRef", description="The PlunderHost being rebooted"),
    PrinterColumn("Last", ".status.lastRemediated", type="date"),
    PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
)


class PlunderRemediation(Resource):
    """The remediation of one unhealthy Machine's host, made by a MachineHealthCheck.

    It has the Machine's name and is owned by it; Cluster API deletes it once the Machine is
    healthy again.
    """

    info = ResourceInfo(
        group=INFRASTRUCTURE_GROUP,
        version=VERSION,
        kind="PlunderRemediation",
        plural="plunderremediations",
        short_names=("plr",),
        categories=("cluster-api", "plunder"),
        labels=CONTRACT_LABELS,
        printer_columns=_INFO_COLUMNS,
    )

    spec: PlunderRemediationSpec = Field(default_factory=PlunderRemediationSpec)
    """How to remediate."""
    status: PlunderRemediationStatus | None = None
    """What the controller did so far."""


class PlunderRemediationTemplateResource(KubeModel):
    """The PlunderRemediation a template stamps out."""

    spec: PlunderRemediationSpec = Field(default_factory=PlunderRemediationSpec)
    """The spec of PlunderRemediations made from this template."""


class PlunderRemediationTemplateSpec(KubeModel):
    """The desired state of a PlunderRemediationTemplate."""

    template: PlunderRemediationTemplateResource
    """The PlunderRemediation to make."""


class PlunderRemediationTemplate(Resource):
    """A template of PlunderRemediations, for a MachineHealthCheck's remediation.templateRef."""

    info = ResourceInfo(
        group=INFRASTRUCTURE_GROUP,
        version=VERSION,
        kind="PlunderRemediationTemplate",
        plural="plunderremediationtemplates",
        short_names=("plrt",),
        categories=("cluster-api", "plunder"),
        labels=CONTRACT_LABELS,
        printer_columns=(PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),),
        has_status=False,
    )

    spec: PlunderRemediationTemplateSpec
    """The template."""
