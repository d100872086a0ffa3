"""The error types for bad user input and unwritable outputs."""


class InputError(ValueError):
    """Bad user input; the message is one line that names the file and the problem."""


class OutputError(InputError):
    """An output that cannot be written (no permission, full disk, read-only file system).

    The message names the final path; nothing is left under that name.
    """
