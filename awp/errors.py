"""The one exception type for user mistakes; the CLI turns it into a single `error: ...` line."""


# Under `plot2d --workers`, rank 0 leaves its one-line error in this file for the launcher to print once.
ERROR_FILE_ENV = "AWP_LANDSCAPE_ERROR_FILE"


class UserError(Exception):
    """A bad value from the user: the message names the value and what is accepted, in one line."""


class Interrupted(Exception):
    """Ctrl-C stopped the work after a complete step; the message says what was kept."""
