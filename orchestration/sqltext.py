"""SQL text as PostgreSQL reads it: statements split outside quotes, comments and $$ bodies.

Enough to tell which statements a revision sends (a COMMIT that would end the step's
transaction; what an autocommit block drops), not a parser of their contents.
"""

from __future__ import annotations

import re

# Statements that end (or fork) the transaction a migration step runs in.
_TRANSACTION_CONTROL = re.compile(
    r"^(COMMIT|ROLLBACK|END|ABORT|BEGIN|START\s+TRANSACTION|PREPARE\s+TRANSACTION|"
    r"SAVEPOINT|RELEASE|SET\s+TRANSACTION|SET\s+SESSION\s+CHARACTERISTICS)\b",
    re.IGNORECASE,
)
# Statements that may remove rows when they cannot be rehearsed in a transaction.
_DESTRUCTIVE = re.compile(
    r"^(DROP\s+(TABLE|SCHEMA|MATERIALIZED\s+VIEW|OWNED)|TRUNCATE|DELETE|"
    r"ALTER\s+TABLE\b.*\b(DROP|TYPE)\b)",
    re.IGNORECASE | re.DOTALL,
)
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def statements(sql: str) -> list[str]:
    """The statements of ``sql``, comments removed, each stripped; empty ones dropped."""
    found: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            current.append(" ")
            continue
        if ch == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            current.append(" ")
            continue
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote
                        end += 2
                        continue
                    break
                end += 1
            current.append(sql[i : end + 1])
            i = end + 1
            continue
        if ch == "$":
            tag = _DOLLAR_TAG.match(sql, i)
            if tag:
                end = sql.find(tag.group(0), tag.end())
                end = n if end < 0 else end + len(tag.group(0))
                current.append(sql[i:end])
                i = end
                continue
        if ch == ";":
            found.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    found.append("".join(current).strip())
    return [s for s in found if s]


def transaction_control(sql: str) -> str | None:
    """The first statement of ``sql`` that would end or change the running transaction."""
    for statement in statements(sql):
        if _TRANSACTION_CONTROL.match(statement):
            return statement
    return None


def destructive(sql: str) -> list[str]:
    """Statements that may remove rows (for SQL that cannot be rehearsed)."""
    return [s for s in statements(sql) if _DESTRUCTIVE.match(s)]
