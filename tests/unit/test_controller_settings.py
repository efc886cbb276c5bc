"""``plunderctl controller``'s settings.

The defaults it shows are what a process uses unset, and what it is given reaches the
controllers.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from plunder.cli.main import controller
from plunder.k8s import client as k8s_client
from plunder.k8s import crds as k8s_crds
from plunder.operator import controller_settings, deadline, slots
from plunder.operator import main as operator_main
from plunder.operator.controller_settings import (
    ControllerSettings,
    DeadlineSettings,
    SlotSettings,
)

OPTIONS = {
    "kube_api_qps": lambda c, s, d: c.client.qps,
    "kube_api_burst": lambda c, s, d: c.client.burst,
    "kube_api_connections": lambda c, s, d: c.client.connections,
    "machine_workers": lambda c, s, d: c.machine_workers,
    "provisioning_limit": lambda c, s, d: s.provisioning_limit,
    "slot_grant_concurrency": lambda c, s, d: s.grant_concurrency,
    "slot_grant_batch": lambda c, s, d: s.grant_batch,
    "provisioning_timeout": lambda c, s, d: d.provisioning_timeout_s,
    "deprovisioning_timeout": lambda c, s, d: d.deprovisioning_timeout_s,
}
"""Each option of ``plunderctl controller`` backed by a setting, and where the setting is."""


def _in_use() -> tuple[ControllerSettings, SlotSettings, DeadlineSettings]:
    return controller_settings.SETTINGS, slots.SETTINGS, deadline.SETTINGS


def test_an_operator_started_without_plunderctl_uses_the_defaults_plunderctl_shows() -> None:
    """``kopf run`` (or a test) gets the measured limits and the same deadlines and slots."""
    unset = (ControllerSettings(), SlotSettings(), DeadlineSettings())
    shown = {option.name: option.default for option in controller.params}
    assert unset[0].client.qps is not None
    assert {name: shown[name] for name in OPTIONS} == {
        name: where(*unset) for name, where in OPTIONS.items()
    }


def test_what_plunderctl_controller_is_given_reaches_the_controllers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(controller_settings, "SETTINGS", ControllerSettings())
    monkeypatch.setattr(slots, "SETTINGS", SlotSettings())
    monkeypatch.setattr(deadline, "SETTINGS", DeadlineSettings())
    monkeypatch.setattr(k8s_client, "sync_client", lambda kubeconfig: None)
    monkeypatch.setattr(k8s_crds, "missing_crds", lambda client: [])
    started: list[tuple[Any, ...]] = []
    monkeypatch.setattr(operator_main, "run_operator", lambda *args: started.append(args))
    given = {
        "kube_api_qps": 7.5,
        "kube_api_burst": 9,
        "kube_api_connections": 13,
        "machine_workers": 3,
        "provisioning_limit": 11,
        "slot_grant_concurrency": 5,
        "slot_grant_batch": 40,
        "provisioning_timeout": 120.0,
        "deprovisioning_timeout": 60.0,
    }
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in given.items()]
    result = CliRunner().invoke(controller, [*argv, "--namespace", "plunder-system"])
    assert result.exit_code == 0, result.output
    assert len(started) == 1
    assert {name: where(*_in_use()) for name, where in OPTIONS.items()} == given
    assert slots.SETTINGS.ledger_namespace == "plunder-system"
