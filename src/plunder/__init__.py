"""cluster-api-plunder: a Cluster API infrastructure provider for bare metal and boot service."""

__version__ = "0.1.0"
