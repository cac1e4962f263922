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
# What may run outside a transaction (in an autocommit block, where no rehearsal can
# follow it) without touching rows: index builds and drops, enum values, maintenance.
# Anything else there is taken as possibly destructive: an allowlist, not a list of
# dangers, because a DO block, a CTE or a function call can hide any of them.
_HARMLESS_OUTSIDE = re.compile(
    r"^(CREATE\s+(UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX|ALTER\s+INDEX|"
    r"ALTER\s+TYPE\s+\S+\s+(ADD|RENAME)\s+VALUE|VACUUM|ANALYZE|COMMENT\s+ON|"
    r"SET\s|RESET\s|SELECT\s+1$)",
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
            # E'...' strings take backslash escapes (E'\'' is one quote, not the end)
            escapes = ch == "'" and i > 0 and sql[i - 1] in "eE" and not _word(sql, i - 2)
            end = i + 1
            while end < n:
                if escapes and sql[end] == "\\":
                    end += 2
                    continue
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote
                        end += 2
                        continue
                    break
                end += 1
            current.append(sql[i : end + 1])
            i = end + 1
            continue
        if ch == "$" and not _word(sql, i - 1):  # x$q$ is an identifier, not a tag
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


def _word(sql: str, at: int) -> bool:
    """Whether ``sql[at]`` continues an identifier (so what follows is part of it)."""
    return at >= 0 and (sql[at].isalnum() or sql[at] in "_$")


def transaction_control(sql: str) -> str | None:
    """The first statement of ``sql`` that would end or change the running transaction."""
    for statement in statements(sql):
        if _TRANSACTION_CONTROL.match(statement):
            return statement
    return None


def destructive(sql: str) -> list[str]:
    """Statements that may remove rows, for SQL that cannot be rehearsed: all but those
    known to leave rows alone."""
    return [s for s in statements(sql) if not _HARMLESS_OUTSIDE.match(s)]
