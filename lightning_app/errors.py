"""The one error type for bad input: a message that names the file or option and what was expected."""


class ConfigError(ValueError):
    """Bad input found before (or instead of) training; the CLI prints it as one line."""
