"""The appliance's I/O shell: devices, netlink, trio tasks, control and CLI.

Everything that touches the operating system lives here; the decisions are
made by the pure core in `protocols/`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("appliance")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
