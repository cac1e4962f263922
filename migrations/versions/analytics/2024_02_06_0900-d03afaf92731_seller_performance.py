"""seller performance

Revision ID: d03afaf92731
Revises: 54886dd283f2
Create Date: 2024-02-06 09:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d03afaf92731"
down_revision: str | Sequence[str] | None = "54886dd283f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "fac149d9b774"


def upgrade() -> None:
    op.create_table(
        "seller_performance",
        sa.Column("seller_id", sa.String(32), primary_key=True),
        sa.Column("orders", sa.Integer, nullable=False),
        sa.Column("revenue", sa.Numeric(12, 2), nullable=False),
        sa.Column("avg_review_score", sa.Numeric(3, 2)),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        schema="analytics",
    )


def downgrade() -> None:
    op.drop_table("seller_performance", schema="analytics")
