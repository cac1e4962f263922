"""products and orders

Revision ID: da35ac5b8dce
Revises: 07e0f754c9d8
Create Date: 2024-01-16 10:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "da35ac5b8dce"
down_revision: str | Sequence[str] | None = "07e0f754c9d8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("product_id", sa.String(32), primary_key=True),
        sa.Column("product_category_name", sa.String(64)),
        sa.Column("product_name_length", sa.Integer),
        sa.Column("product_description_length", sa.Integer),
        sa.Column("product_photos_qty", sa.Integer),
        sa.Column("product_weight_g", sa.Integer),
        sa.Column("product_length_cm", sa.Integer),
        sa.Column("product_height_cm", sa.Integer),
        sa.Column("product_width_cm", sa.Integer),
        schema="ecommerce",
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(32), primary_key=True),
        sa.Column(
            "customer_id",
            sa.String(32),
            sa.ForeignKey("ecommerce.customers.customer_id"),
            nullable=False,
        ),
        sa.Column("order_status", sa.String(16), nullable=False),
        sa.Column("order_purchase_timestamp", sa.DateTime, nullable=False),
        sa.Column("order_approved_at", sa.DateTime),
        sa.Column("order_delivered_carrier_date", sa.DateTime),
        sa.Column("order_delivered_customer_date", sa.DateTime),
        sa.Column("order_estimated_delivery_date", sa.DateTime),
        schema="ecommerce",
    )


def downgrade() -> None:
    op.drop_table("orders", schema="ecommerce")
    op.drop_table("products", schema="ecommerce")
