"""iPXE scripts: what a host that network-boots is told to do, by its state."""
