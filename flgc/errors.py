"""Bad input from a user: one line on stderr and exit code 2 (see flgc.engine.cli)."""


class UsageError(Exception):
    """A configuration, argument, data or checkpoint problem the user can fix."""
