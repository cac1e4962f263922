"""The audit history of an environment as a timeline picture (SVG).

Hand-drawn SVG rather than matplotlib: importing and rendering with matplotlib took about
a second per Dagster run, half of the `migrate` job's time, for a few dozen marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from xml.sax.saxutils import escape

from orchestration.audit import AuditRow

WIDTH, LANE, LEFT, RIGHT, TOP, BOTTOM = 900, 44, 120, 120, 40, 46
# operation -> (shape, colour); a failed step is a red cross whatever it was
STYLE = {
    "migration": ("up", "#2e7d32"),
    "rollback": ("down", "#ef6c00"),
    "stamp": ("square", "#6d4c41"),
    "verify": ("circle", "#1565c0"),
    "failed": ("cross", "#c62828"),
}


def _shape(kind: str, x: float, y: float, colour: str) -> str:
    r = 6
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
    return f'<circle cx="{x}" cy="{y}" r="{r}" fill="{colour}"/>'


def _time_label(when: datetime, span_seconds: float) -> str:
    if span_seconds < 60:
        return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    if span_seconds < 86_400:
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


def audit_timeline(rows: Sequence[AuditRow], title: str) -> str:
    """One lane per schema, one mark per audit row, in time order. Returns SVG text."""
    ordered = sorted((r for r in rows if r.changed_at), key=lambda r: (r.changed_at, r.id or 0))
    schemas = sorted({r.schema_name or "?" for r in ordered}) or ["(no rows)"]
    height = TOP + LANE * len(schemas) + BOTTOM
    start = ordered[0].changed_at if ordered else None
    end = ordered[-1].changed_at if ordered else None
    span = (end - start).total_seconds() if start and end else 0.0
    plot_width = WIDTH - LEFT - RIGHT

    def x_of(when: datetime) -> float:
        if not span or start is None:
            return LEFT + plot_width / 2
        return round(LEFT + plot_width * (when - start).total_seconds() / span, 1)

    def y_of(schema: str) -> float:
        return TOP + LANE * schemas.index(schema) + LANE / 2

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for schema in schemas:
        y = y_of(schema)
        out.append(f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 10}" y="{y + 4}" text-anchor="end">{escape(schema)}</text>')
    axis_y = TOP + LANE * len(schemas) + 8
    out.append(
        f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" stroke="#888"/>'
    )
    if start is not None and end is not None:
        ticks = 5 if span else 1
        for i in range(ticks):
            when = start + (end - start) * (i / (ticks - 1) if ticks > 1 else 0)
            x = x_of(when)
            out.append(f'<line x1="{x}" y1="{axis_y}" x2="{x}" y2="{axis_y + 5}" stroke="#888"/>')
            out.append(
                f'<text x="{x}" y="{axis_y + 20}" text-anchor="middle" font-size="10">'
                f"{escape(_time_label(when, span))}</text>"
            )
    for row in ordered:
        kind = row.operation if row.success else "failed"
        shape, colour = STYLE.get(kind, ("circle", "grey"))
        x, y = x_of(row.changed_at), y_of(row.schema_name or "?")  # type: ignore[arg-type]
        tip = (
            f"{row.operation} {row.prev_alembic_version or 'base'} -> "
            f"{row.alembic_version or 'base'} ({'ok' if row.success else 'FAILED'})"
        )
        out.append(
            f'<g class="mark {escape(kind)}"><title>{escape(tip)}</title>'
            f"{_shape(shape, x, y, colour)}</g>"
        )
        if row.operation != "verify":
            label = escape((row.alembic_version or "base")[:7])
            out.append(
                f'<text x="{x}" y="{y - 10}" text-anchor="middle" font-size="9">{label}</text>'
            )
    seen = list(dict.fromkeys(r.operation if r.success else "failed" for r in ordered))
    for i, kind in enumerate(seen):
        shape, colour = STYLE.get(kind, ("circle", "grey"))
        y = TOP + 10 + 20 * i
        out.append(_shape(shape, WIDTH - RIGHT + 24, y, colour))
        out.append(f'<text x="{WIDTH - RIGHT + 38}" y="{y + 4}">{escape(kind)}</text>')
    out.append("</svg>")
    return "\n".join(out)
