"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class SeqrecError(Exception):
    """A user-facing error: bad input, bad config, missing file. Message is one line."""

    def __init__(self, message: object = "", *args: object) -> None:
        # messages quote file contents (headers, ids): escape control characters so it stays one line
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(message))
        super().__init__(text, *args)


class DataError(SeqrecError):
    """An input file or dataset cannot be read or is unusable (names the file and the problem)."""


class ConfigError(SeqrecError):
    """A configuration key or value is invalid."""


class SeqrecWarning(UserWarning):
    """A documented fallback was taken (e.g. popularity for an empty history): the result is
    usable, and the message says what was done and how often. The CLI prints ``warning: …`` on one
    line; ``--strict`` (where a command has it) turns data warnings into errors."""


def warn(message: str) -> None:
    """Issue a one-line ``SeqrecWarning`` attributed to the caller's caller."""
    import warnings

    warnings.warn(SeqrecWarning(str(message).replace("\n", " ")), stacklevel=3)


def shorten(text: object, width: int = 200) -> str:
    """``text`` on one line, cut to about ``width`` characters at a word boundary (a space or a field
    separator) with "…": foreign messages and data lines quoted in ours are never cut mid-word."""
    text = " ".join(line.strip() for line in str(text).splitlines() if line.strip())  # tabs kept: they tell
    if len(text) <= width:
        return text
    cut = max(text.rfind(c, 0, width) for c in " \t,;:|")
    return text[: cut if cut > 0 else width].rstrip(" \t,;:|") + "…"
