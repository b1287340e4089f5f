"""The results store: SQLAlchemy 2.0 records, one session scope, and the queries that scheduler
and worker share. Returns plain dataclasses, never ORM rows, to everything outside this package."""

from store.db import StoreError, StoreUnavailable, create_schema, make_engine, session_scope
from store.records import Base, JobRecord, LossPointRecord, SweepRecord
from store.redact import redact_url

__all__ = [
    "Base",
    "JobRecord",
    "LossPointRecord",
    "StoreError",
    "StoreUnavailable",
    "SweepRecord",
    "create_schema",
    "make_engine",
    "redact_url",
    "session_scope",
]
