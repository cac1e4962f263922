"""The two kinds of failure every entry point tells apart (CLI exit codes 2 and 1)."""


class ConfigurationError(Exception):
    """Bad input or configuration: nothing was changed (CLI exit code 2)."""


class MigrationError(Exception):
    """A migration or verify step ran and failed (CLI exit code 1)."""


class DataLossRefused(ConfigurationError):
    """A downgrade would drop rows and was not allowed to (exit code 2, nothing changed)."""


# How long an error's text may be, in an audit row or an output line.
ERROR_LIMIT = 4000


def driver_error_line(exc: BaseException) -> str:
    """``Type: message`` of an error, the driver's own where SQLAlchemy wrapped it (its
    ``orig``): not masked, not limited (callers mask, then limit)."""
    orig = getattr(exc, "orig", None)
    message = str(orig if orig is not None else exc).strip()
    return f"{type(orig or exc).__name__}: {message}"
