"""A cascade profile's run on its decision: the stages called, their answers and verdicts, the answering model.

    decisions.cascade    JSON text (NULL for a single-call decision)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("cascade", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("cascade")
