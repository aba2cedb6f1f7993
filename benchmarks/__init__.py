"""Command-line benchmarks and demos for PART: ``python -m benchmarks --help``."""


class UsageError(Exception):
    """A problem the user can fix (data missing and offline, device not available).

    The command line prints it as one ``error:`` line, without a traceback, and exits with code 2.
    """
