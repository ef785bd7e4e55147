"""Add in_distribution: the out-of-distribution check's verdict, filterable and indexed.

NULL for rows stored before the check existed, or by a model without one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("in_distribution", sa.Boolean(), nullable=True))
    op.create_index("ix_predictions_in_distribution", "predictions", ["in_distribution"])


def downgrade() -> None:
    op.drop_index("ix_predictions_in_distribution", "predictions")
    op.drop_column("predictions", "in_distribution")
