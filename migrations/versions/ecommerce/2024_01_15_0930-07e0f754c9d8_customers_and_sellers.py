"""customers and sellers

Revision ID: 07e0f754c9d8
Revises: 7afdd87a5e29
Create Date: 2024-01-15 09:30:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "07e0f754c9d8"
down_revision: str | Sequence[str] | None = "7afdd87a5e29"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(32), primary_key=True),
        sa.Column("customer_unique_id", sa.String(32), nullable=False),
        sa.Column("customer_zip_code_prefix", sa.String(5), nullable=False),
        sa.Column("customer_city", sa.String(64), nullable=False),
        sa.Column("customer_state", sa.String(2), nullable=False),
        schema="ecommerce",
    )
    op.create_table(
        "sellers",
        sa.Column("seller_id", sa.String(32), primary_key=True),
        sa.Column("seller_zip_code_prefix", sa.String(5), nullable=False),
        sa.Column("seller_city", sa.String(64), nullable=False),
        sa.Column("seller_state", sa.String(2), nullable=False),
        schema="ecommerce",
    )


def downgrade() -> None:
    op.drop_table("sellers", schema="ecommerce")
    op.drop_table("customers", schema="ecommerce")
