"""Which rows a downgrade would destroy: its SQL rendered offline, its DROPs counted live."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa

_NAME = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"({_NAME})\.({_NAME})"
_DROP_TABLE = re.compile(rf"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}", re.IGNORECASE)
_DROP_COLUMN = re.compile(
    rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_QUALIFIED}\s+DROP\s+(?:COLUMN\s+)?"
    rf"(?:IF\s+EXISTS\s+)?({_NAME})",
    re.IGNORECASE,
)
_DROP_SCHEMA_CASCADE = re.compile(
    rf"DROP\s+SCHEMA\s+(?:IF\s+EXISTS\s+)?({_NAME})\s+CASCADE", re.IGNORECASE
)


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith('"') else name.lower()


@dataclass(frozen=True)
class AtRisk:
    """Rows that a downgrade step would destroy."""

    revision: str
    what: str  # "table ecommerce.orders" or "column ecommerce.orders.note"
    rows: int

    def __str__(self) -> str:
        return f"{self.what} ({self.rows} row(s), reverting {self.revision})"


def _count(conn: sa.Connection, sql: str) -> int:
    try:
        with conn.begin_nested():
            return int(conn.scalar(sa.text(sql)) or 0)
    except sa.exc.ProgrammingError:
        return 0  # the table or column is not there: nothing to lose


def rows_at_risk(conn: sa.Connection, revision: str, sql: str) -> list[AtRisk]:
    """Every non-empty table or column that ``sql`` (one step's downgrade) drops."""
    found: list[AtRisk] = []
    for schema, table in _DROP_TABLE.findall(sql):
        s, t = _unquote(schema), _unquote(table)
        rows = _count(conn, f'SELECT count(*) FROM "{s}"."{t}"')
        if rows:
            found.append(AtRisk(revision, f"table {s}.{t}", rows))
    for schema, table, column in _DROP_COLUMN.findall(sql):
        s, t, c = _unquote(schema), _unquote(table), _unquote(column)
        if c.upper() == "CONSTRAINT":
            continue
        rows = _count(conn, f'SELECT count("{c}") FROM "{s}"."{t}"')
        if rows:
            found.append(AtRisk(revision, f"column {s}.{t}.{c}", rows))
    for (schema,) in (m.groups() for m in _DROP_SCHEMA_CASCADE.finditer(sql)):
        s = _unquote(schema)
        tables = conn.scalars(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY 1"), {"s": s}
        ).all()
        for t in tables:
            rows = _count(conn, f'SELECT count(*) FROM "{s}"."{t}"')
            if rows:
                found.append(AtRisk(revision, f"table {s}.{t}", rows))
    conn.rollback()
    return found
