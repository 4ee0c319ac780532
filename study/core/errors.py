"""One exception type for mistakes a user can fix.

The command-line entry points catch it and print its message as a single
sentence with a non-zero exit code, so a typo never costs a traceback or
any compute.
"""


class StudyError(Exception):
    """A user-facing error whose message is one complete sentence."""
