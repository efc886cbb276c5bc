"""The boot service's HTTP side: iPXE scripts, files, health and metrics."""
