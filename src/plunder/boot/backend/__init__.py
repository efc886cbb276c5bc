"""Where the boot service learns about hosts: one interface, a Kubernetes implementation."""
