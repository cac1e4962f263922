# The project image: the migration engine, the Alembic project and the Dagster code.
# Used by docker-compose.yml for the code location, the webserver and the daemon.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/project

COPY pyproject.toml README.md ./
COPY orchestration ./orchestration
RUN pip install .

# The Alembic project (docker-compose.yml mounts migrations/ over this copy, so the
# revision sensor sees new files without a rebuild).
COPY alembic.ini migrate.toml workspace.yaml ./
COPY migrations ./migrations
COPY deploy/workspace.docker.yaml ./deploy/workspace.docker.yaml
COPY deploy/dagster.instance.yaml ${DAGSTER_HOME}/dagster.yaml

EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "dagster_alembic.definitions"]
