"""Installing a host with its distribution's own installer: Debian preseed and RHEL kickstart.

The alternative to the agent streaming an image (``deploymentType: preseed|kickstart``, as in
the original plunder). The boot service sends a host in ``provisioning`` into the installer's
kernel, serves it a per-host answer file rendered here, and the file's last step (preseed's
``late_command``, kickstart's ``%post``) seeds cloud-init from the boot service's NoCloud
endpoints, exactly as the agent does after writing an image, so the rest of the life cycle (the
bootstrap data, phone home, ``provisioned``) is the same for every way of installing.
"""
