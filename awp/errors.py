"""The one exception type for user mistakes; the CLI turns it into a single `error: ...` line."""


class UserError(Exception):
    """A bad value from the user: the message names the value and what is accepted, in one line."""


class Interrupted(Exception):
    """Ctrl-C stopped the work after a complete step; the message says what was kept."""
