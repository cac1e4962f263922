"""create ecommerce schema

Revision ID: 7afdd87a5e29
Revises:
Create Date: 2024-01-15 09:00:00.000000+00:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "7afdd87a5e29"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("ecommerce",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS ecommerce")


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS ecommerce")
