"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class PobenchError(Exception):
    """Bad usage or bad input: the message names the file, row or key at fault."""

    exit_code = 2
