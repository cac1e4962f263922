"""URL spellings reach psycopg2, and passwords never reach output."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from orchestration.errors import ConfigurationError
from orchestration.urls import display_url, normalize_url, redact


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:pw@db:5432/app",
        "postgres://u:pw@db:5432/app",
        "postgresql+psycopg2://u:pw@db:5432/app",
        "postgresql+psycopg://u:pw@db:5432/app",
    ],
)
def test_every_spelling_becomes_psycopg2(raw):
    url = normalize_url(raw)
    assert url.drivername == "postgresql+psycopg2"
    assert (url.host, url.database, url.password) == ("db", "app", "pw")


@pytest.mark.parametrize("spelling", ["postgresql", "postgres"])
def test_both_spellings_connect_for_real(server_url, spelling):
    raw = server_url.set(drivername=spelling).render_as_string(hide_password=False)
    engine = sa.create_engine(normalize_url(raw), poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT 1")) == 1
    engine.dispose()


def test_other_schemes_and_garbage_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="unsupported"):
        normalize_url("mysql://u@h/db")
    with pytest.raises(ConfigurationError, match="not a database URL"):
        normalize_url("not a url")


def test_passwords_are_masked_and_redacted():
    url = normalize_url("postgresql://u:p%40ss%25word@db/app")
    assert url.password == "p@ss%word"
    assert "p@ss%word" not in display_url(url)
    assert redact("FATAL: password p@ss%word rejected", url) == "FATAL: password *** rejected"
    rendered = url.render_as_string(hide_password=False)
    assert "p%40ss%25word" in rendered
    assert redact(f"cannot use {rendered}", url) == "cannot use postgresql+psycopg2://u:***@db/app"
