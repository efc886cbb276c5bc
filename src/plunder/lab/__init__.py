"""The lab: a local management plane, and (later) the boot service and virtual bare-metal hosts."""
