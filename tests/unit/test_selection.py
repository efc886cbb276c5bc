"""Host selection: which hosts qualify and in what order machines try them."""

from __future__ import annotations

from collections import Counter

from plunder.api.common import LabelSelector, LabelSelectorRequirement
from plunder.reconcile.selection import (
    SAMPLE,
    Consumer,
    HostCandidate,
    choose_host,
    failure_domains,
    selector_matches,
)


def host(name: str, state: str = "available", **labels: str) -> HostCandidate:
    return HostCandidate(
        name, "ns", f"uid-{name}", "1", f"00:50:56:00:00:{name[-2:]}", state, labels
    )


def test_reads_a_host_body() -> None:
    body = {
        "metadata": {
            "name": "h1",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": "7",
            "labels": {"rack": "r1"},
        },
        "spec": {
            "bootMACAddress": "00:50:56:a5:11:20",
            "consumerRef": {"kind": "PlunderMachine", "name": "m1"},
            "network": {"ipAddress": "10.0.0.5"},
        },
        "status": {
            "state": "provisioned",
            "ipAddress": "172.31.99.9",
            "phases": [
                {
                    "name": "provisioning",
                    "started": "2026-11-25T12:00:00Z",
                    "finished": "2026-11-25T12:00:41.500Z",
                }
            ],
        },
    }
    found = HostCandidate.from_body(body)
    assert found.consumer == Consumer("PlunderMachine", "ns", "m1")
    assert (found.mac, found.state, found.resource_version) == (
        "00:50:56:a5:11:20",
        "provisioned",
        "7",
    )
    assert (found.static_ip, found.ip_address) == ("10.0.0.5", "172.31.99.9")
    assert found.provisioned_in == 41.5
    assert not found.free
    assert HostCandidate.from_body({"metadata": {"name": "x"}, "spec": {}}).state == "discovered"


def test_label_selectors_as_kubernetes_evaluates_them() -> None:
    labels = {"size": "big", "zone": "a"}
    assert selector_matches(labels, None)
    assert selector_matches(labels, LabelSelector(match_labels={"size": "big"}))
    assert not selector_matches(labels, LabelSelector(match_labels={"size": "small"}))

    def expr(operator: str, *values: str, key: str = "size") -> LabelSelector:
        return LabelSelector(
            match_expressions=[
                LabelSelectorRequirement(key=key, operator=operator, values=list(values) or None)
            ]
        )  # type: ignore[arg-type]

    assert selector_matches(labels, expr("In", "big", "huge"))
    assert not selector_matches(labels, expr("In", "small"))
    assert selector_matches(labels, expr("NotIn", "small"))
    assert selector_matches(labels, expr("NotIn", "x", key="gpu"))
    assert selector_matches(labels, expr("Exists"))
    assert not selector_matches(labels, expr("Exists", key="gpu"))
    assert selector_matches(labels, expr("DoesNotExist", key="gpu"))


def test_only_free_matching_hosts_in_the_failure_domain_qualify() -> None:
    hosts = [
        host("h01", "provisioning"),
        host("h02", "inspecting"),
        HostCandidate(
            "h03", "ns", "u", "1", "m", "available", {}, Consumer("PlunderMachine", "ns", "x")
        ),
        HostCandidate("h04", "ns", "u", "1", "m", "available", {}, deleting=True),
        host("h05", zone="a", size="big"),
        host("h06", zone="b", size="big"),
        host("h07", zone="b", size="small"),
    ]
    big = LabelSelector(match_labels={"size": "big"})
    assert choose_host(hosts, "m1", big, ("zone", "b")) == hosts[5]
    assert choose_host(hosts, "m1", big, ("zone", "c")) is None
    assert choose_host(hosts, "m1", big, None, exclude=frozenset({"h05", "h06"})) is None
    assert choose_host(hosts[:4], "m1") is None


def test_order_is_stable_per_machine_and_spread_across_machines() -> None:
    hosts = [host(f"h{i:02d}") for i in range(20)]
    first = choose_host(hosts, "machine-a")
    assert first is not None and choose_host(list(reversed(hosts)), "machine-a") == first
    firsts = Counter(getattr(choose_host(hosts, f"machine-{i}"), "name", None) for i in range(20))
    assert len(firsts) >= 8, "twenty machines all trying the same few hosts first"


def test_in_a_big_pool_a_host_few_match_is_still_found() -> None:
    pool = [host(f"h{i:05d}", size="small") for i in range(SAMPLE * 100)]
    pool[4321] = host("h04321", size="big")
    big = LabelSelector(match_labels={"size": "big"})
    assert choose_host(pool, "machine-a", big) == pool[4321]
    assert choose_host(pool, "machine-a", big, exclude=frozenset({"h04321"})) is None


def test_in_a_big_pool_taken_hosts_are_passed_over_and_machines_spread() -> None:
    pool = [host(f"h{i:05d}") for i in range(SAMPLE * 50)]
    first = choose_host(pool, "machine-a")
    assert first is not None and first.free
    again = choose_host(pool, "machine-a", exclude=frozenset({first.name}))
    assert again is not None and again.name != first.name, "a retry tries the next host"
    assert choose_host(pool, "machine-a") == first, "the same machine ranks the same way"
    claimed = [
        h if i % 10 else HostCandidate(h.name, "ns", h.uid, "2", h.mac, "provisioning")
        for i, h in enumerate(pool)
    ]
    for i in range(50):
        chosen = choose_host(claimed, f"machine-{i}")
        assert chosen is not None and chosen.free
    firsts = Counter(getattr(choose_host(pool, f"machine-{i}"), "name", None) for i in range(50))
    assert len(firsts) >= 45, "fifty machines mostly try different hosts first"


def test_failure_domains_are_the_distinct_values_of_the_label() -> None:
    mine = Consumer("PlunderMachine", "ns", "m1")
    hosts = [
        host("h01", zone="a"),
        HostCandidate("h02", "ns", "u", "1", "m", "provisioned", {"zone": "b"}, mine),
    ]
    assert failure_domains([*hosts, host("h03", zone="a"), host("h04")], "zone") == ["a", "b"]


def test_a_host_nobody_accepted_is_never_free() -> None:
    body = {"metadata": {"name": "h"}, "spec": {}, "status": {"state": "available"}}
    assert not HostCandidate.from_body(body).free, "discovered is not accepted"
    accepted = {**body, "spec": {"accepted": True}}
    assert HostCandidate.from_body(accepted).free
