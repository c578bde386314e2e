"""One exception type for mistakes in user input.

The CLI prints a ``UserError`` as a single line and exits non-zero; anything else is a bug and shows a
traceback. Messages name the file or field and what was expected.
"""


class UserError(Exception):
    """Bad input from the user: a file, a field, an option. Printed as one line by the CLI."""
