"""What the savings dashboard shows of each decision beside its cost: drift and decision time.

    decisions.novelty             the prompt's novelty score (NULL when the router has none)
    decisions.decision_latency_s  seconds from the request to its decision

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("novelty", sa.Float))
        batch.add_column(sa.Column("decision_latency_s", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("decision_latency_s")
        batch.drop_column("novelty")
