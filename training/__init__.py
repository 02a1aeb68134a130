"""Training: outcome logs in, routers out — ingestion, datasets, fitting, replay, tuning and MLflow tracking.

Depends on ``models`` and ``router``; never on ``serving`` (served traffic
reaches training through the outcome store's exported files).
"""
