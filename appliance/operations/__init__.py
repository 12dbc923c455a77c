"""What an operator talks to: the control socket, metrics, logs, the status report.

- `status`: the one typed status report that the CLI, metrics and lab read.
- `control`: the control socket (status, sessions, drain).
- `metrics`: the Prometheus endpoint.
- `logs`: plain or JSON log lines.
"""
