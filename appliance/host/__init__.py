"""Adapters to the host's operating system; no protocol rules live here.

- `devices`: the TAP and TUN devices.
- `netlink`: bridge, addresses, routes and sysctls, through pyroute2.
- `listening`: which ports the local services listen on.
- `notify`: systemd's notify protocol (READY, WATCHDOG, STATUS).
"""
