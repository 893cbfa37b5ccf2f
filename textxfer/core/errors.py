"""The one error type for bad user input: the CLI prints it as a paragraph and exits with code 2."""


class UserError(Exception):
    """Something the user can fix (a recipe key, a file, a column, a row). The message names it and the fix."""
