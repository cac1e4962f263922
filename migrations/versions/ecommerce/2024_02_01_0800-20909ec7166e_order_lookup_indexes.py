"""order lookup indexes, built without blocking writes

Revision ID: 20909ec7166e
Revises: fac149d9b774
Create Date: 2024-02-01 08:00:00.000000+00:00

CREATE INDEX CONCURRENTLY cannot run inside a transaction: autocommit_block() commits
the revision's transaction first and runs these statements on their own.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "20909ec7166e"
down_revision: str | Sequence[str] | None = "fac149d9b774"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_customer_id",
            "orders",
            ["customer_id"],
            schema="ecommerce",
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_orders_purchase_timestamp",
            "orders",
            ["order_purchase_timestamp"],
            schema="ecommerce",
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_order_items_product_id",
            "order_items",
            ["product_id"],
            schema="ecommerce",
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in (
            "ix_order_items_product_id",
            "ix_orders_purchase_timestamp",
            "ix_orders_customer_id",
        ):
            op.drop_index(name, schema="ecommerce", postgresql_concurrently=True, if_exists=True)
