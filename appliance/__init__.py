"""The appliance's I/O shell: what a production host runs.

The top level holds the entry points (`cli`, `daemon`) and the configuration;
`dataplane/` reads the segment, `host/` adapts to the operating system, and
`operations/` is what an operator talks to (control socket, metrics, logs).

Everything that touches the operating system lives here; the decisions are
made by the pure core in `protocols/`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("appliance")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
