"""The boot service: DHCP and TFTP through a supervised dnsmasq, HTTP for iPXE scripts and files.

Each protocol is its own package (``dhcp``, ``http``, ``ipxe``), started together by
``service``; host state comes from a ``backend`` (a watch cache of PlunderHosts), so the
protocol code never talks to Kubernetes itself. ``boot`` never imports ``operator``.
"""
