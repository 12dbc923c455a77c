"""Errors a user can cause. The CLI prints their message as one line, never a traceback."""


class UserError(Exception):
    """A problem with the command line, the configuration or the host, with its fix."""


class ConfigError(UserError):
    """A configuration key with a bad value; the message names the key."""
