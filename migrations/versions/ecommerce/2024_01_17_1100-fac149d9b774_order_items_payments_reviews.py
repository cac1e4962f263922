"""order items, payments and reviews

Revision ID: fac149d9b774
Revises: da35ac5b8dce
Create Date: 2024-01-17 11:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "fac149d9b774"
down_revision: str | Sequence[str] | None = "da35ac5b8dce"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "order_items",
        sa.Column(
            "order_id", sa.String(32), sa.ForeignKey("ecommerce.orders.order_id"), nullable=False
        ),
        sa.Column("order_item_id", sa.Integer, nullable=False),
        sa.Column(
            "product_id",
            sa.String(32),
            sa.ForeignKey("ecommerce.products.product_id"),
            nullable=False,
        ),
        sa.Column(
            "seller_id", sa.String(32), sa.ForeignKey("ecommerce.sellers.seller_id"), nullable=False
        ),
        sa.Column("shipping_limit_date", sa.DateTime, nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column("freight_value", sa.Numeric(10, 2), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "order_item_id"),
        schema="ecommerce",
    )
    op.create_table(
        "payments",
        sa.Column(
            "order_id", sa.String(32), sa.ForeignKey("ecommerce.orders.order_id"), nullable=False
        ),
        sa.Column("payment_sequential", sa.Integer, nullable=False),
        sa.Column("payment_type", sa.String(16), nullable=False),
        sa.Column("payment_installments", sa.Integer, nullable=False),
        sa.Column("payment_value", sa.Numeric(10, 2), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "payment_sequential"),
        schema="ecommerce",
    )
    op.create_table(
        "reviews",
        sa.Column("review_id", sa.String(32), nullable=False),
        sa.Column(
            "order_id", sa.String(32), sa.ForeignKey("ecommerce.orders.order_id"), nullable=False
        ),
        sa.Column("review_score", sa.SmallInteger, nullable=False),
        sa.Column("review_comment_title", sa.Text),
        sa.Column("review_comment_message", sa.Text),
        sa.Column("review_creation_date", sa.DateTime, nullable=False),
        sa.Column("review_answer_timestamp", sa.DateTime),
        sa.PrimaryKeyConstraint("review_id", "order_id"),
        sa.CheckConstraint("review_score BETWEEN 1 AND 5", name="review_score_range"),
        schema="ecommerce",
    )


def downgrade() -> None:
    op.drop_table("reviews", schema="ecommerce")
    op.drop_table("payments", schema="ecommerce")
    op.drop_table("order_items", schema="ecommerce")
