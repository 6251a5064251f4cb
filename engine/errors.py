"""User-facing errors: the CLI prints the message on one line and exits with code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (config, data, command line). The message names the file/key/row and what was expected."""

    exit_code = 2
