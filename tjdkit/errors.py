"""The one exception type for mistakes a user can make.

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class TjdkitError(Exception):
    """A user-caused error (bad name, bad file, bad value) with a message fit to print."""
