"""The outcome store: every routed request, its upstream attempts, feedback, and budget bookings.

In the bottom layer so that serving (which writes it), training (which
learns from it) and any other program (a dashboard, a LiteLLM callback) use
one interface without importing each other::

    from models.store import open_store

    with open_store("postgresql://thrifty@db/thrifty") as store:   # or a SQLite path
        rows = store.joined(include_unlabeled=True, since=t0)

Backends by URL scheme (:data:`~models.store.base.BACKENDS`): SQLite (a path,
or ``sqlite:///...``) and PostgreSQL (``postgresql://...``).
"""

from models.store.base import (
    BACKENDS,
    NotAStoreError,
    OutcomeStore,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    StoreVersionError,
    UnknownStoreError,
    display_url,
    get_backend,
    open_store,
    register_backend,
    url_scheme,
)
from models.store.records import AttemptRecord, BudgetCheck, DecisionRecord, FeedbackRecord, Reservation

__all__ = [
    "BACKENDS",
    "AttemptRecord",
    "BudgetCheck",
    "DecisionRecord",
    "FeedbackRecord",
    "NotAStoreError",
    "OutcomeStore",
    "Reservation",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "StoreVersionError",
    "UnknownStoreError",
    "display_url",
    "get_backend",
    "open_store",
    "register_backend",
    "url_scheme",
]
