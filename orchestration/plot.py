"""The audit history of an environment as a timeline picture (PNG)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from orchestration.audit import AuditRow

# operation -> (marker, colour); failed steps are drawn as red crosses whatever they were
_STYLE = {
    "migration": ("^", "#2e7d32"),
    "rollback": ("v", "#ef6c00"),
    "stamp": ("s", "#6d4c41"),
    "verify": ("o", "#1565c0"),
}
_FAILED = ("X", "#c62828")


def audit_timeline(rows: Sequence[AuditRow], title: str) -> bytes:
    """One lane per schema, one mark per audit row, in time order. Returns PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    ordered = sorted((r for r in rows if r.changed_at), key=lambda r: (r.changed_at, r.id or 0))
    schemas = sorted({r.schema_name or "?" for r in ordered})
    lane = {s: i for i, s in enumerate(schemas)}
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.7 * max(len(schemas), 1)), dpi=100)
    seen = set()
    for row in ordered:
        kind = row.operation if row.success else "failed"
        marker, colour = _FAILED if not row.success else _STYLE.get(row.operation, ("o", "grey"))
        when = mdates.date2num(row.changed_at)
        ax.scatter(
            when,
            lane[row.schema_name or "?"],
            marker=marker,
            color=colour,
            s=70,
            zorder=3,
            label=None if kind in seen else kind,
        )
        seen.add(kind)
        if row.operation != "verify":
            ax.annotate(
                (row.alembic_version or "base")[:7],
                (when, lane[row.schema_name or "?"]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=7,
            )
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_yticks(range(len(schemas)), schemas)
    ax.set_ylim(-0.7, len(schemas) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    if seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
