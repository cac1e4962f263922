"""The two kinds of failure every entry point tells apart (CLI exit codes 2 and 1)."""


class ConfigurationError(Exception):
    """Bad input or configuration: nothing was changed (CLI exit code 2)."""


class MigrationError(Exception):
    """A migration or verify step ran and failed (CLI exit code 1)."""


class DataLossRefused(ConfigurationError):
    """A downgrade would drop rows and was not allowed to (exit code 2, nothing changed)."""
