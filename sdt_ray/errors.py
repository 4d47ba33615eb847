"""Errors that carry a message meant for the user, not a traceback."""


class SdtError(Exception):
    """Base class: the CLI prints the message and exits with status 2."""


class InputError(SdtError):
    """The input data (a table, a file, a column) is not what the command needs."""


class ConfigError(SdtError):
    """A recipe, flag or checkpoint does not fit the command."""
