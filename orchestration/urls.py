"""Database URLs: one driver for every spelling, and passwords kept out of every output."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from orchestration.errors import ConfigurationError

# SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, which is not installed.
_PSYCOPG2 = "postgresql+psycopg2"
_POSTGRES_SPELLINGS = {"postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"}


def normalize_url(url: str | URL) -> URL:
    """Parse a PostgreSQL URL in any common spelling and bind it to psycopg2."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        raise ConfigurationError("not a database URL: expected postgresql://user@host/db") from None
    if parsed.drivername not in _POSTGRES_SPELLINGS:
        raise ConfigurationError(
            f"unsupported database URL scheme {parsed.drivername!r}: expected postgresql://"
        )
    return parsed.set(drivername=_PSYCOPG2)


def display_url(url: URL) -> str:
    """The URL as people may see it: password masked."""
    return url.render_as_string(hide_password=True)


def redact(text: str, *urls: URL | None) -> str:
    """Remove every password of ``urls`` from ``text`` (error messages quote DSNs)."""
    for url in urls:
        if url is not None and url.password:
            password = str(url.password)
            # as typed, and as it appears inside a rendered URL
            for form in {password, quote_plus(password), quote(password, safe="")}:
                text = text.replace(form, "***")
    return text
