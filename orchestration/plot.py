"""The audit history of an environment as a timeline picture (SVG), read at a glance.

One lane per schema; one column per audit row, in order, so steps that share a second (a
whole upgrade often does) stand side by side instead of on one dot. Time is labelled where it
moves on. Each lane has two rows: changes on top (migration up, rollback down, stamp square,
with the revision they reached), verifies under them (a ring, filled when it passed), so a
verify never hides a migration. A failed step is a red cross whatever it was.

Hand-drawn SVG rather than matplotlib: importing and rendering with matplotlib took about
a second per Dagster run, half of the `migrate` job's time, for a few dozen marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from xml.sax.saxutils import escape

from dagster_alembic.audit import AuditRow

# Fits the Dagster UI's metadata dialog and an asset page's column without scrolling.
WIDTH, LEFT, RIGHT, TOP, LANE, BOTTOM = 640, 92, 16, 52, 56, 44
MAX_COLUMNS = 40  # the newest rows; older ones are in the table next to the picture
GREEN, ORANGE, BROWN, BLUE, RED, GREY = (
    "#2e7d32",
    "#e65100",
    "#6d4c41",
    "#1565c0",
    "#c62828",
    "#9e9e9e",
)
LEGEND = (
    ("up", GREEN, "migration"),
    ("down", ORANGE, "rollback"),
    ("square", BROWN, "stamp"),
    ("ring", BLUE, "verify passed"),
    ("cross", RED, "failed"),
)


def _shape(kind: str, x: float, y: float, colour: str, r: float = 6) -> str:
    if kind == "up":
        return f'<polygon points="{x},{y - r} {x - r},{y + r} {x + r},{y + r}" fill="{colour}"/>'
    if kind == "down":
        return f'<polygon points="{x},{y + r} {x - r},{y - r} {x + r},{y - r}" fill="{colour}"/>'
    if kind == "square":
        return f'<rect x="{x - r}" y="{y - r}" width="{2 * r}" height="{2 * r}" fill="{colour}"/>'
    if kind == "cross":
        return (
            f'<path d="M{x - r},{y - r}L{x + r},{y + r}M{x - r},{y + r}L{x + r},{y - r}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
    return (
        f'<circle cx="{x}" cy="{y}" r="{r - 1}" fill="white" stroke="{colour}" stroke-width="2.5"/>'
    )


def _kind(row: AuditRow) -> tuple[str, str]:
    if not row.success:
        return "cross", RED
    return {
        "migration": ("up", GREEN),
        "rollback": ("down", ORANGE),
        "stamp": ("square", BROWN),
        "verify": ("ring", BLUE),
    }.get(row.operation, ("square", GREY))


def _when(when: datetime, previous: datetime | None) -> str:
    """A time label: the date only when it changed since the previous label."""
    if previous is None or previous.date() != when.date():
        return when.strftime("%m-%d %H:%M:%S")
    return when.strftime("%H:%M:%S")


def audit_timeline(rows: Sequence[AuditRow], title: str) -> str:
    """One lane per schema, one column per audit row (the newest MAX_COLUMNS). SVG text."""
    ordered = sorted((r for r in rows if r.changed_at), key=lambda r: (r.changed_at, r.id or 0))
    ordered = ordered[-MAX_COLUMNS:]
    schemas = list(dict.fromkeys(r.schema_name or "?" for r in ordered)) or ["(no rows)"]
    height = TOP + LANE * len(schemas) + BOTTOM
    plot = WIDTH - LEFT - RIGHT
    step = plot / max(len(ordered), 1)

    def x_of(i: int) -> float:
        return round(LEFT + step * (i + 0.5), 1)

    def lane(schema: str) -> float:
        return TOP + LANE * schemas.index(schema)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    x = 8.0
    for shape, colour, label in LEGEND:  # one line under the title
        out.append(_shape(shape, x + 6, 34, colour, 5))
        out.append(f'<text x="{x + 15}" y="38" font-size="11">{label}</text>')
        x += 22 + 6.2 * len(label)
    for schema in schemas:
        top = lane(schema)
        out.append(
            f'<rect x="{LEFT}" y="{top + 4}" width="{plot}" height="{LANE - 8}" fill="#f5f5f5"/>'
        )
        out.append(
            f'<text x="{LEFT - 8}" y="{top + LANE / 2 + 4}" text-anchor="end">'
            f"{escape(schema[:12])}</text>"
        )
    axis = TOP + LANE * len(schemas) + 4
    out.append(f'<line x1="{LEFT}" y1="{axis}" x2="{WIDTH - RIGHT}" y2="{axis}" stroke="#888"/>')
    # a time label where the second changes, if there is room since the last one
    last_x, last_second, last_label = -1e9, None, None
    for i, row in enumerate(ordered):
        assert row.changed_at is not None  # rows without a time were left out above
        second = row.changed_at.replace(microsecond=0)
        if second != last_second:
            if i:
                boundary = round(LEFT + step * i, 1)
                out.append(
                    f'<line x1="{boundary}" y1="{TOP}" x2="{boundary}" y2="{axis}" '
                    'stroke="#ccc" stroke-dasharray="2,3"/>'
                )
            if x_of(i) - last_x >= 84:
                label = _when(row.changed_at, last_label)
                out.append(
                    f'<text x="{round(LEFT + step * i + 2, 1)}" y="{axis + 16}" '
                    f'font-size="10" fill="#555">{escape(label)}</text>'
                )
                last_x, last_label = x_of(i), row.changed_at
            last_second = second
    label_every = max(1, round(46 / step))  # revision labels may not run into each other
    changes = 0
    for i, row in enumerate(ordered):
        shape, colour = _kind(row)
        top, x = lane(row.schema_name or "?"), x_of(i)
        y = top + LANE * 0.36 if row.operation != "verify" else top + LANE * 0.74
        tip = (
            f"{row.changed_at:%Y-%m-%d %H:%M:%S} {row.operation} "
            f"{row.prev_alembic_version or 'base'} -> {row.alembic_version or 'base'} "
            f"({'ok' if row.success else 'FAILED'})"
        )
        out.append(
            f'<g class="mark {escape(row.operation if row.success else "failed")}">'
            f"<title>{escape(tip)}</title>{_shape(shape, x, y, colour)}</g>"
        )
        if row.operation != "verify":
            if changes % label_every == 0:
                out.append(
                    f'<text x="{x}" y="{top + 12}" text-anchor="middle" font-size="9" '
                    f'fill="#333">{escape((row.alembic_version or "base")[:7])}</text>'
                )
            changes += 1
    if not ordered:
        out.append(
            f'<text x="{LEFT + plot / 2}" y="{TOP + LANE / 2 + 4}" text-anchor="middle" '
            'fill="#777">no audit rows yet</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
