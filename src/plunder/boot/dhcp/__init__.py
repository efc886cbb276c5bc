"""DHCP and TFTP: dnsmasq's configuration, and its supervision."""
