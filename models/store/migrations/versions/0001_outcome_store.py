"""The outcome store as thrifty shipped it before versioning.

    decisions            one row per request: decision, prompt, chosen/answered model, usage, cost, latency, status
    attempts             one row per upstream call made for a decision (fail-over adds rows)
    feedback             outcomes attached later by decision id (the latest one counts)
    budget_spend         settled spend per client and budget period (survives restarts)
    budget_reservations  the maximum cost of each request in flight under a budget

A store written before versioning has some of these tables already (the
budget tables came later than the others): only the missing ones are
created, and the store is then at this revision.

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> dict[str, tuple]:
    return {
        "decisions": (
            [
                sa.Column("decision_id", sa.Text, primary_key=True),
                sa.Column("ts", sa.Float, nullable=False),
                sa.Column("endpoint", sa.Text, nullable=False),
                sa.Column("client", sa.Text),
                sa.Column("requested_model", sa.Text, nullable=False),
                sa.Column("task", sa.Text),
                sa.Column("prompt", sa.Text),
                sa.Column("prompt_chars", sa.Integer),
                sa.Column("router_version", sa.Text),
                sa.Column("policy", sa.Text),
                sa.Column("knob", sa.Float),
                sa.Column("fallback", sa.Integer),
                sa.Column("candidates", sa.Text, nullable=False),
                sa.Column("chosen_model", sa.Text, nullable=False),
                sa.Column("propensity", sa.Float, nullable=False),
                sa.Column("explored", sa.Integer, nullable=False, server_default=sa.text("0")),
                sa.Column("answered_model", sa.Text),
                sa.Column("input_tokens", sa.Integer),
                sa.Column("output_tokens", sa.Integer),
                sa.Column("cost_usd", sa.Float),
                sa.Column("latency_s", sa.Float),
                sa.Column("status", sa.Text, nullable=False),
                sa.Column("error_kind", sa.Text),
                sa.Column("http_status", sa.Integer),
                sa.Column("stream", sa.Integer, nullable=False, server_default=sa.text("0")),
                sa.Column("finish_reason", sa.Text),
                sa.Column("response", sa.Text),
            ],
            [("decisions_ts", ["ts"])],
            {},
        ),
        "attempts": (
            [
                sa.Column("decision_id", sa.Text, primary_key=True),
                sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("model", sa.Text, nullable=False),
                sa.Column("ts", sa.Float, nullable=False),
                sa.Column("latency_s", sa.Float),
                sa.Column("status", sa.Text, nullable=False),
                sa.Column("error_kind", sa.Text),
                sa.Column("http_status", sa.Integer),
                sa.Column("input_tokens", sa.Integer),
                sa.Column("output_tokens", sa.Integer),
                sa.Column("cost_usd", sa.Float),
            ],
            [],
            {},
        ),
        "feedback": (
            [
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("decision_id", sa.Text, nullable=False),
                sa.Column("ts", sa.Float, nullable=False),
                sa.Column("success", sa.Float, nullable=False),
                sa.Column("score_raw", sa.Float),
                sa.Column("source", sa.Text, nullable=False),
            ],
            [("feedback_decision", ["decision_id"])],
            {"sqlite_autoincrement": True},
        ),
        "budget_spend": (
            [
                sa.Column("client", sa.Text, primary_key=True),
                sa.Column("period_start", sa.Float, primary_key=True),
                sa.Column("spent_usd", sa.Float, nullable=False, server_default=sa.text("0")),
                sa.Column("requests", sa.Integer, nullable=False, server_default=sa.text("0")),
            ],
            [],
            {},
        ),
        "budget_reservations": (
            [
                sa.Column("decision_id", sa.Text, primary_key=True),
                sa.Column("client", sa.Text, nullable=False),
                sa.Column("period_start", sa.Float, nullable=False),
                sa.Column("amount_usd", sa.Float, nullable=False),
                sa.Column("expires_at", sa.Float, nullable=False),
            ],
            [("budget_reservations_client", ["client", "period_start"])],
            {},
        ),
    }


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, (columns, indexes, options) in _tables().items():
        if name in existing:
            continue
        op.create_table(name, *columns, **options)
        for index, on in indexes:
            op.create_index(index, name, on)


def downgrade() -> None:
    for name in reversed(list(_tables())):
        op.drop_table(name)
