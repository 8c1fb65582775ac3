"""The one error type for bad input: a message that names the file or option and what was expected."""


class ConfigError(ValueError):
    """Bad input found before (or instead of) training; the CLI prints it as one line."""


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """A message on one line: the first non-empty line of an exception's (or a program's) text, at
    most ``limit`` characters; an exception without a message gives its type's name."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return line[:limit] or ("" if isinstance(error, str) else type(error).__name__)
