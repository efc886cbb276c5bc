"""Which PlunderMachines a watch event concerns, beyond the machine itself.

A machine's reconcile depends on objects it does not own: its host, its Machine and Cluster, its
IPAddressClaim, and, while it waits for hardware, any host of its namespace becoming free. The
events of those objects only queue the machines they concern (:class:`Wakeups` routes them to a
work queue); nothing polls while waiting for a host. What a machine waits for is noted by its
reconcile and dropped when the machine is gone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

Key = tuple[str, str]
"""(namespace, name) of a PlunderMachine."""


class Wakeups:
    """The dependents of hosts and Clusters, and where their wakes go."""

    def __init__(self, wake: Callable[[Key], None]) -> None:
        self.wake = wake
        """Queue one machine's reconcile."""
        self._waiting_for_host: dict[str, set[str]] = defaultdict(set)
        self._by_cluster: dict[Key, set[str]] = defaultdict(set)
        self._host_watchers: dict[Key, Key] = {}

    def wake_waiting_for_host(self, namespace: str) -> None:
        """Wake every machine of ``namespace`` that waits for a free host."""
        for name in list(self._waiting_for_host.get(namespace, ())):
            self.wake((namespace, name))

    def wake_cluster(self, namespace: str, cluster: str) -> None:
        """Wake every machine of a Cluster."""
        for name in list(self._by_cluster.get((namespace, cluster), ())):
            self.wake((namespace, name))

    def note(self, key: Key, cluster: str | None, waiting_for_host: bool) -> None:
        """Record what wakes ``key``."""
        namespace, name = key
        if cluster:
            self._by_cluster[(namespace, cluster)].add(name)
        if waiting_for_host:
            self._waiting_for_host[namespace].add(name)
        else:
            self._waiting_for_host[namespace].discard(name)

    def watch_host(self, host: Key, key: Key) -> None:
        """Wake ``key`` when ``host`` changes, whoever it is claimed by (a release's wipe)."""
        self._host_watchers[host] = key

    def wake_host_watcher(self, host: Key) -> None:
        """``host`` changed."""
        if (key := self._host_watchers.get(host)) is not None:
            self.wake(key)

    def forget(self, key: Key) -> None:
        """The machine is gone: nothing wakes it any more."""
        namespace, name = key
        for host in [h for h, watcher in self._host_watchers.items() if watcher == key]:
            del self._host_watchers[host]
        self._waiting_for_host[namespace].discard(name)
        for members in self._by_cluster.values():
            members.discard(name)
