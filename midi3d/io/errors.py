"""The error type for bad user input."""


class InputError(ValueError):
    """Bad user input; the message is one line that names the file and the problem."""
