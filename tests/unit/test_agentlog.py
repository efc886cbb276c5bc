"""What the host printed and how far its write got: bounding, scrubbing, rate, rendering."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest

from plunder.api.inventory import PlunderHost
from plunder.boot import agentlog, trust
from plunder.boot.progress import ProgressGate
from plunder.cli import hosts as cli_hosts
from plunder.reconcile import hoststate
from tests.unit.test_hoststate import IMAGE, NOW, host, with_status

TOKEN = "5f" * 32


def test_a_short_log_is_kept_whole_and_a_long_one_keeps_its_newest_lines() -> None:
    assert agentlog.bound("one\ntwo\n", 100) == "one\ntwo\n"
    text = "".join(f"line {n:04d}\n" for n in range(1000))  # 10,000 bytes
    kept = agentlog.bound(text, 1000)
    first, _, rest = kept.partition("\n")
    assert first.startswith("[") and first.endswith("bytes of earlier log dropped]")
    assert rest.endswith("line 0999\n") and rest.startswith("line ")  # cut at a whole line
    assert len(rest.encode()) <= 1000
    assert int(first[1:].split()[0]) + len(rest.encode()) == len(text.encode())


def test_the_bound_never_splits_a_character() -> None:
    kept = agentlog.bound("é" * 1000, 101)
    assert "\ufffd" not in kept and kept.endswith("é")


def test_tokens_credentials_and_terminal_escapes_are_scrubbed() -> None:
    raw = (
        f"[1.0] lookup answered with {TOKEN}\n"
        "[1.1] GET /x?token=abcdef&y=1 Authorization: Bearer s3cr3t-value\n"
        "[1.2] checksum file http://user:hunter2@mirror/SHA256SUMS: 404\n"
        "[1.3] nonce=00ff00ff password=pw\n"
        "[1.4] colour \x1b[31mred\x1b[0m bell\x07 crlf\r\n"
        "[1.5] the image's sha256 is " + "ab" * 32 + "\n"
    )
    clean = agentlog.clean(raw.encode(), [TOKEN])
    for secret in (TOKEN, "abcdef", "s3cr3t-value", "hunter2", "00ff00ff", "=pw"):
        assert secret not in clean, secret
    assert "\x1b" not in clean and "\x07" not in clean and "\r" not in clean
    assert "token=[redacted]&y=1" in clean and "http://[redacted]@mirror/SHA256SUMS" in clean
    assert "ab" * 32 in clean, "a checksum is a diagnosis, not a secret"
    assert clean.count("\n") == raw.count("\n")


def test_an_upload_of_a_new_boot_keeps_the_last_boots_log_as_the_previous() -> None:
    first = agentlog.next_data(None, "b1", "inspected\n", "t1")
    assert first == {"log": "inspected\n", "bootID": "b1", "updated": "t1"}
    again = agentlog.next_data(first, "b1", "inspected\nwrote\n", "t2")
    assert again == {"log": "inspected\nwrote\n", "bootID": "b1", "updated": "t2"}
    wipe = agentlog.next_data(again, "b2", "wiped\n", "t3")
    assert wipe["previous.log"] == "inspected\nwrote\n" and wipe["previousBootID"] == "b1"
    assert agentlog.next_data(wipe, "b2", "wiped\nparked\n", "t4")["previous.log"] == (
        "inspected\nwrote\n"
    )
    kept = agentlog.from_configmap("h", wipe)
    assert kept is not None and kept.boot_id == "b2" and kept.previous_boot_id == "b1"
    assert agentlog.render(kept).splitlines() == ["# host h, boot b2, last sent t3", "wiped"]
    assert agentlog.render(kept, previous=True).endswith("inspected\nwrote\n")
    assert agentlog.from_configmap("h", {}) is None and agentlog.from_configmap("h", None) is None


def test_configmap_names_are_valid_object_names() -> None:
    assert agentlog.configmap_name("host-00-50-56-a5-11-20") == "host-00-50-56-a5-11-20-agent-log"
    long = "h" * 253
    name = agentlog.configmap_name(long)
    assert len(name) <= 253 and name.endswith("-agent-log")
    assert name != agentlog.configmap_name("h" * 252 + "i")
    assert agentlog.label_value(long) == "" and agentlog.label_value("h1") == "h1"


def test_a_log_is_taken_except_once_the_install_has_ended() -> None:
    assert trust.takes_agent_log(host("inspecting"))
    assert trust.takes_agent_log(host("available"))
    assert trust.takes_agent_log(host("error"))
    assert trust.takes_agent_log(host("deprovisioning"))
    provisioning = host("provisioning", image=IMAGE)
    assert trust.takes_agent_log(provisioning)
    ended = with_status(
        provisioning,
        phases=[
            {
                "name": "writing",
                "started": "2026-11-25T12:00:00Z",
                "finished": "2026-11-25T12:01:00Z",
            }
        ],
    )
    assert not trust.takes_agent_log(ended)
    assert not trust.takes_agent_log(host("provisioned"))


def writing_host(**progress: Any) -> PlunderHost:
    provisioning = host("provisioning", image=IMAGE)
    begun = hoststate.agent_progress(
        provisioning, {"phase": "writing", "image_bytes": "681574400"}, NOW
    )
    assert begun.status is not None
    assert begun.status["writeProgress"]["imageBytes"] == 681574400
    assert begun.status["writeProgress"]["downloadedBytes"] == 0
    status = dict(begun.status)
    status["writeProgress"] = {**status["writeProgress"], **progress}
    return with_status(provisioning, **status)


def test_progress_is_recorded_only_while_the_write_runs() -> None:
    writing = writing_host()
    assert trust.takes_write_progress(writing)
    fields = {"downloaded": "340787200", "written": "1000000000", "total": "681574400"}
    status = hoststate.write_progress(writing, fields, NOW + timedelta(seconds=5))
    assert status == {
        "writeProgress": {
            "downloadedBytes": 340787200,
            "writtenBytes": 1000000000,
            "imageBytes": 681574400,
            "updated": "2026-11-25T12:00:05.000Z",
        }
    }
    assert hoststate.write_progress(writing, {"written": "x"}, NOW) is None
    assert hoststate.write_progress(host("provisioning", image=IMAGE), fields, NOW) is None
    assert not trust.takes_write_progress(host("provisioning", image=IMAGE))
    done = hoststate.agent_progress(writing, {"phase": "done", "bytes": "1"}, NOW)
    assert done.status is not None
    finished = with_status(writing, phases=done.status["phases"])
    assert hoststate.write_progress(finished, fields, NOW) is None
    assert not trust.takes_write_progress(finished)


def test_the_progress_column_shows_a_bar_while_writing_only() -> None:
    half = writing_host(downloadedBytes=340787200, writtenBytes=1048576000)
    assert cli_hosts.write_fraction(half) == 0.5
    cell = cli_hosts.progress_cell(half)
    assert cell == "[##########----------]  50% 1000 MiB written"
    unknown = writing_host(imageBytes=None, writtenBytes=5 * 1048576)
    assert cli_hosts.progress_cell(unknown) == "5 MiB written"
    raw = writing_host(downloadedBytes=None, writtenBytes=681574400)
    assert cli_hosts.progress_cell(raw).startswith("[####################] 100%")
    assert cli_hosts.progress_cell(host("available")) == ""
    table = cli_hosts.hosts_table([half], NOW)
    assert [column.header for column in table.columns][-1] == "Progress"


def test_progress_writes_are_bounded_per_host_and_across_the_fleet() -> None:
    clock = [0.0]
    gate = ProgressGate(interval=10.0, per_second=2.0, clock=lambda: clock[0])
    assert gate.admit("a") and not gate.admit("a"), "one per host per interval"
    assert gate.admit("b")
    assert not gate.admit("c"), "the fleet's budget (burst 2) is spent"
    clock[0] = 0.5
    assert gate.admit("c"), "refilled at 2 a second"
    clock[0] = 9.9
    assert not gate.admit("a")
    clock[0] = 10.0
    assert gate.admit("a")


class _WatchEndedError(Exception):
    pass


class _Body(dict[str, Any]):
    def to_dict(self) -> dict[str, Any]:
        return dict(self)


class _FakeClient:
    """list() answers the hosts, the first watch() a change, the second ends the test."""

    def __init__(self, listed: list[PlunderHost], changes: list[PlunderHost]) -> None:
        self.listed, self.changes, self.watches = listed, changes, 0

    def list(self, *_: Any, **__: Any) -> list[_Body]:
        return [_Body(host.to_api()) for host in self.listed]

    def watch(self, *_: Any, **__: Any) -> Any:
        self.watches += 1
        if self.watches > 1:
            raise _WatchEndedError
        return [("MODIFIED", _Body(host.to_api())) for host in self.changes]


def test_get_hosts_watch_prints_each_change_with_its_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    monkeypatch.setattr(cli_hosts, "console", console)
    half = writing_host(downloadedBytes=340787200, writtenBytes=1048576000)
    client = _FakeClient([host("available")], [half])
    with pytest.raises(_WatchEndedError):
        cli_hosts.watch_hosts(client, None)  # type: ignore[arg-type]
    output = console.file.getvalue()  # type: ignore[attr-defined]
    header, first, change = output.splitlines()
    assert "Progress" in header and "available" in first
    assert "provisioning" in change and "[##########----------]  50%" in change
