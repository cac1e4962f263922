"""create analytics schema with daily sales

Revision ID: 54886dd283f2
Revises:
Create Date: 2024-02-05 09:00:00.000000+00:00

Reads ecommerce.orders, order_items and payments: depends on the ecommerce revision
that created them, so Alembic (and Dagster's asset graph) runs that one first.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "54886dd283f2"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("analytics",)
depends_on: str | Sequence[str] | None = "fac149d9b774"


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS analytics")
    op.execute(
        """
        CREATE VIEW analytics.daily_sales AS
        SELECT date_trunc('day', o.order_purchase_timestamp)::date AS sales_date,
               count(DISTINCT o.order_id) AS orders,
               sum(oi.price) AS revenue,
               sum(oi.freight_value) AS freight
          FROM ecommerce.orders o
          JOIN ecommerce.order_items oi ON oi.order_id = o.order_id
         WHERE o.order_status <> 'canceled'
         GROUP BY 1
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS analytics.daily_sales")
    op.execute("DROP SCHEMA IF EXISTS analytics")
