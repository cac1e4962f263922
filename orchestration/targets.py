"""Which database an environment migrates: its URL variable, or the embedded default."""

from __future__ import annotations

import os

from sqlalchemy.engine import URL

from dagster_alembic import embedded
from dagster_alembic.errors import ConfigurationError
from dagster_alembic.settings import ProjectSettings
from dagster_alembic.urls import normalize_url, register_url


def configured_urls(settings: ProjectSettings) -> dict[str, str]:
    """The URLs that are given, by variable name: the caller's (env.url, e.g. the Dagster
    resource's config), else the url_env variable's; their passwords are registered for
    masking. A URL set to an empty or blank string is an error, never "unset": it would
    silently select the embedded server."""
    found = {}
    for env in settings.environments:
        raw = env.url if env.url is not None else os.environ.get(env.url_env)
        if raw is None:
            continue
        if not raw.strip():
            where = f"the {env.name} URL given" if env.url is not None else env.url_env
            raise ConfigurationError(
                f"{where} is set but empty: give the {env.name} database's URL, or "
                "unset it (with no URL set, the embedded server is used)"
            )
        register_url(raw)
        found[env.url_env] = raw
    return found


def uses_embedded(settings: ProjectSettings) -> bool:
    """The embedded default applies only when no environment names a URL at all."""
    return not configured_urls(settings)


def _embedded_server(settings: ProjectSettings) -> URL:
    """The embedded server, up, with a database per environment and Dagster's."""
    server = embedded.ensure_server(settings.root)
    embedded.ensure_databases(server, [*settings.environment_names, embedded.DAGSTER_DATABASE])
    return server


def database_url(settings: ProjectSettings, environment: str) -> URL:
    """The normalized (psycopg2) URL of ``environment``'s target database."""
    env = settings.environment(environment)
    if uses_embedded(settings):
        return _embedded_server(settings).set(database=env.name)
    raw = configured_urls(settings).get(env.url_env)
    where = f"the {env.name} URL given" if env.url is not None else env.url_env
    if raw is None:
        raise ConfigurationError(
            f"{env.url_env} is not set: other environments have URLs, so the embedded "
            f"default is off and {env.name!r} needs its own"
        )
    try:
        url = normalize_url(raw)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if not url.database:
        # libpq would pick the database named after the user: never a surprise target
        raise ConfigurationError(f"{where} names no database: end it with /<database>")
    if url.host and "@" in url.host:
        # (its host is not shown: the part before the last @ belongs to the password)
        raise ConfigurationError(
            f"{where}: an @ in the password is read as the end of it, so the host "
            "is unclear: write an @ in the password as %40"
        )
    return url


def dagster_storage_url(settings: ProjectSettings) -> URL | None:
    """Dagster's own storage on the embedded server, or None when URLs are configured."""
    if not uses_embedded(settings):
        return None
    return _embedded_server(settings).set(database=embedded.DAGSTER_DATABASE)
