"""BMC power management: one interface (``base``), drivers found by name (``registry``)."""
