"""Database URLs: one driver for every spelling, and passwords kept out of every output.

This module is the one place that masks secrets. ``redact`` removes, from any text:

- the password of any URL-like text (``scheme://user:PASSWORD@host``),
- any ``password=`` parameter (a URL query, a libpq ``key=value`` DSN, ``PGPASSWORD=``,
  a ``'password': '...'`` mapping),
- every password this process has seen in a URL (``normalize_url`` registers them), in
  each form it may take: as typed in the variable, decoded, and quote/quote_plus encoded,

so that error texts, audit rows, Dagster events and CLI output can be cleaned without the
URL at hand.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dagster_alembic.errors import ConfigurationError

# SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, which is not installed.
_PSYCOPG2 = "postgresql+psycopg2"
_POSTGRES_SPELLINGS = {"postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"}
MASK = "***"

# scheme://user:PASSWORD@ : the password runs to the last @ of the token (a password
# typed with / or @ in it is still masked whole); no whitespace or quotes, so a URL
# inside a quoted or JSON string never swallows its neighbours.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*:)[^\s'\"]*@")
# password=VALUE (URL query, libpq DSN, PGPASSWORD=..., password="..." in code): a quoted
# value (with backslash escapes), else up to whitespace, &, #, ;, a quote or a backslash
# (in JSON text, the start of an escape: masking stops there and the JSON stays valid).
_PARAMETER = re.compile(
    r"(?P<head>password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&#;'\"\\]*)",
    re.IGNORECASE,
)
# 'password': 'VALUE' or "password": "VALUE" (a mapping's repr, JSON)
_MAPPING = re.compile(
    r"(?P<head>(?P<q>['\"])password(?P=q)\s*:\s*(?P<v>['\"]))(?:(?!(?P=v)).)*(?P=v)",
    re.IGNORECASE,
)
# a known password inside a longer word is not that password ("post" in "postgresql")
_EDGE_BEFORE = r"(?<![A-Za-z0-9])"
_EDGE_AFTER = r"(?![A-Za-z0-9])"

_known: set[str] = set()
_known_lock = threading.Lock()
_known_pattern: re.Pattern[str] | None = None


def _forms(password: str) -> set[str]:
    """The ways ``password`` may be written in text: as given, decoded, and encoded."""
    found = set()
    for base in {password, unquote(password), unquote_plus(password)}:
        found |= {base, quote(base, safe=""), quote_plus(base), quote(base)}
    return {form for form in found if form}


def _pattern_for(passwords: Iterable[str]) -> re.Pattern[str] | None:
    forms = sorted({f for p in passwords for f in _forms(p)}, key=len, reverse=True)
    if not forms:
        return None
    return re.compile("|".join(_edged(f) for f in forms))


def _edged(form: str) -> str:
    """``form`` as a pattern that does not match inside a longer word."""
    before = _EDGE_BEFORE if form[0].isalnum() else ""
    after = _EDGE_AFTER if form[-1].isalnum() else ""
    return f"{before}{re.escape(form)}{after}"


def register_password(password: str | None) -> None:
    """Remember a password so that every later ``redact`` masks it, in all its forms."""
    global _known_pattern
    if not password:
        return
    with _known_lock:
        if password not in _known:
            _known.add(password)
            _known_pattern = _pattern_for(_known)


def forget_passwords() -> None:
    """Clear the registry (tests)."""
    global _known_pattern
    with _known_lock:
        _known.clear()
        _known_pattern = None


def _typed_passwords(text: str) -> list[str]:
    """Passwords as written in URL text: the userinfo one and any ``password=`` value."""
    found = []
    userinfo = re.search(r"://[^\s:/?#@]*:([^\s]*)@", text)
    if userinfo:
        found.append(userinfo.group(1))
    for match in re.finditer(r"[?&;\s]password=([^&#\s]*)", text, re.IGNORECASE):
        found.append(match.group(1))
    return found


def register_url(url: str | URL | None) -> None:
    """Register every password of a URL (string as typed, or parsed); never raises."""
    if url is None:
        return
    if isinstance(url, str):
        for typed in _typed_passwords(url):
            register_password(typed)
        try:
            url = make_url(url)
        except Exception:
            return
    for password in _url_passwords(url):
        register_password(password)


def _url_passwords(url: URL) -> list[str]:
    found = [str(url.password)] if url.password else []
    for key, value in url.query.items():
        if key.lower() == "password":
            found += [value] if isinstance(value, str) else list(value)
    return [p for p in found if p]


def has_password(value: str) -> bool:
    """Whether a URL-like value holds a password (in its userinfo or its query)."""
    try:
        return bool(_url_passwords(make_url(value)))
    except Exception:
        return bool(_USERINFO.search(value) or _PARAMETER.search(value))


def normalize_url(url: str | URL) -> URL:
    """Parse a PostgreSQL URL in any common spelling and bind it to psycopg2.

    Its passwords are registered: ``redact`` masks them from then on, with or without it.
    """
    register_url(url)
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
    """The URL as people may see it: password masked, in the userinfo and in the query
    (a socket folder in ``?host=`` keeps its slashes)."""
    shown = url.render_as_string(hide_password=True)
    if "?" in shown:
        base, query = shown.split("?", 1)
        shown = f"{base}?{query.replace('%2F', '/')}"
    return redact(shown, url)


def redact(text: str, *urls: URL | str | None) -> str:
    """``text`` with every password masked: those of ``urls``, every registered one, any
    URL userinfo password and any ``password=`` parameter."""
    extra = []
    for url in urls:
        if isinstance(url, str):
            extra += _typed_passwords(url)
            try:
                url = make_url(url)
            except Exception:
                continue
        if url is not None:
            extra += _url_passwords(url)
    # Known passwords first, whole: a pattern below may stop inside one (at a space, say)
    # and leave the rest of it for anyone to read.
    for pattern in (_known_pattern, _pattern_for(extra)):
        if pattern is not None:
            text = pattern.sub(MASK, text)
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _PARAMETER.sub(lambda m: f"{m['head']}{MASK}", text)
    text = _MAPPING.sub(lambda m: f"{m['head']}{MASK}{m['v']}", text)
    return text


def redact_data(data: Any, *urls: URL | str | None) -> Any:
    """``data`` (JSON-like: dicts, lists, strings) with every string redacted."""
    if isinstance(data, str):
        return redact(data, *urls)
    if isinstance(data, Mapping):
        return {key: redact_data(value, *urls) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(value, *urls) for value in data]
    return data
