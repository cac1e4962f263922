"""URL spellings reach psycopg2, and passwords never reach output."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dagster_alembic import urls
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.urls import display_url, normalize_url, redact


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


# --- secrets in every form (issue 11, item 9) ---------------------------------------------

SPELLINGS = ["postgresql", "postgres", "postgresql+psycopg2"]
TYPED = "Hunter2%25Sekr!t"  # as typed in a URL: %25 is a percent sign
DECODED = "Hunter2%Sekr!t"  # what the server gets
# as typed, decoded, quote/quote_plus encoded (as SQLAlchemy renders it), the typed form encoded
FORMS = [TYPED, DECODED, "Hunter2%25Sekr%21t", "Hunter2%2525Sekr%21t"]


@pytest.fixture
def fresh_registry():
    """Each test starts with no password known from an earlier one."""
    urls.forget_passwords()
    yield
    urls.forget_passwords()


@pytest.mark.usefixtures("fresh_registry")
@pytest.mark.parametrize("scheme", [*SPELLINGS, "postgresql+psycopg", "redis", "https"])
def test_the_userinfo_password_of_any_url_like_text_is_masked(scheme):
    text = f"could not use {scheme}://app_user:n0t-known-Pw@db.example:5432/app?sslmode=require."
    assert (
        redact(text)
        == f"could not use {scheme}://app_user:***@db.example:5432/app?sslmode=require."
    )
    # no user name, or a password holding what a URL would not allow unencoded
    assert redact(f"{scheme}://:pw-only@h/db") == f"{scheme}://:***@h/db"
    assert "x/y" not in redact(f"'{scheme}://u:x/y@h/db'")
    # nothing to mask: left alone
    assert redact(f"{scheme}://u@h:5432/db") == f"{scheme}://u@h:5432/db"


@pytest.mark.usefixtures("fresh_registry")
@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            "postgresql://u@h/db?sslmode=require&password=qu3ry-Pw&x=1",
            "sslmode=require&password=***&x=1",
        ),
        ("postgres://u@h/db?PASSWORD=qu3ry-Pw", "PASSWORD=***"),
        ("host=h port=5432 password=qu3ry-Pw user=u", "password=*** user=u"),
        ("host=h password = 'qu3ry-Pw with \\' quote' user=u", "password = *** user=u"),
        ("PGPASSWORD=qu3ry-Pw psql", "PGPASSWORD=*** psql"),
        ("{'password': 'qu3ry-Pw', 'user': 'u'}", "'password': '***', 'user': 'u'}"),
    ],
)
def test_password_parameters_are_masked_in_urls_and_libpq_dsns(text, kept):
    masked = redact(text)
    assert "qu3ry-Pw" not in masked and "quote" not in masked
    assert masked.endswith(kept)


@pytest.mark.usefixtures("fresh_registry")
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_normalize_url_registers_every_form_of_the_password(spelling):
    url = normalize_url(f"{spelling}://app:{TYPED}@db:5432/app")
    assert url.password == DECODED
    message = " | ".join(f"form {form} here" for form in FORMS)
    # later, without the URL at hand (an error text, an audit row, a Dagster event)
    masked = redact(message)
    assert "Sekr" not in masked, masked
    assert masked.count("***") == len(FORMS)
    # words that merely contain a short password are not mangled
    normalize_url(f"{spelling}://app:post@db/app")
    shown = redact("postgresql and postgres: password post")
    assert shown == "postgresql and postgres: password ***"


@pytest.mark.usefixtures("fresh_registry")
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_query_password_is_registered_and_masked_in_display_url(spelling):
    url = normalize_url(f"{spelling}://app@db/app?password={TYPED}&sslmode=require")
    shown = display_url(url)
    assert "Sekr" not in shown
    assert shown == "postgresql+psycopg2://app@db/app?password=***&sslmode=require"
    assert redact(f"server said {DECODED}") == "server said ***"


@pytest.mark.usefixtures("fresh_registry")
def test_redact_with_urls_given_keeps_working_for_passwords_never_registered():
    url = make_url(f"postgresql://app:{TYPED}@db/app")  # parsed elsewhere, never normalized
    assert redact(f"x {DECODED} y", url) == "x *** y"
    assert redact(f"x {TYPED} y", f"postgres://app:{TYPED}@db/app") == "x *** y"
    assert redact("nothing secret", None) == "nothing secret"


@pytest.mark.usefixtures("fresh_registry")
def test_has_password_sees_userinfo_and_query_passwords():
    assert urls.has_password("postgresql://u:pw@h/db")
    assert urls.has_password("postgres://u@h/db?password=pw")
    assert not urls.has_password("postgresql://u@h/db?sslmode=require")
    assert not urls.has_password("/tmp/dagster_home")


def test_a_password_with_a_space_is_masked_whole_inside_a_password_parameter():
    """The password= pattern stops at a space: the known password goes first, whole."""
    normalize_url("postgresql://adv:Pa%25s%40%20%21w0rd%3Ax%2Fy@127.0.0.1/db")
    shown = redact("dsn=host=x password=Pa%s@ !w0rd:x/y user=y; pw=Pa%s@ !w0rd:x/y")
    assert "w0rd" not in shown and shown == "dsn=host=x password=*** user=y; pw=***"


def test_a_double_quoted_password_parameter_is_masked_and_json_stays_json():
    """Found by an adversarial session: `password="hunter2"` (a hook's error, code) was
    shown, and masking the JSON text a second time broke its escapes."""
    import json

    text = 'RuntimeError: connect(password="hunter2") failed'
    assert "hunter2" not in redact(text)
    document = urls.redact_data({"error": text, "other": 'password=\\"x\\"'})
    shown = redact(json.dumps(document))
    assert "hunter2" not in shown
    assert json.loads(shown)["error"].startswith("RuntimeError: connect(password=***")
