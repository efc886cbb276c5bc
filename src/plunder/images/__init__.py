"""Every artefact the project builds and caches by version, in one home.

The Go programs (:mod:`.binaries`), the agent's kernel and initramfs (:mod:`.agent`), the
Debian + cloud-init OS image (:mod:`.osimage`), the Kubernetes node image (:mod:`.nodeimage`)
with its container images (:mod:`.containers`), and Debian's netboot installer
(:mod:`.installer`). Each is built once into ``~/.cache/plunder`` under a name that carries its
version, in a scratch folder beside its target, and renamed into place when complete
(:mod:`.cache`), so a concurrent or interrupted build never leaves half an artefact where a
host or a test could pick it up. The lab and the tests only ask for them.
"""
