"""The one exception type users see: a single line naming the problem and the fix."""


class AnymaskError(Exception):
    """An error caused by the user's input (flags, files, data).

    The command-line tool prints its message as one line on stderr and exits non-zero, without a
    traceback. Library users catch it like any exception. Messages say what was wrong and what to do.
    """
