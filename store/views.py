"""SQL views over the results tables, so that plain ``sqlite3``/``psql`` users get the common
questions answered too. Created (idempotently) by ``create_schema``."""

from __future__ import annotations

from sqlalchemy import Engine


def create_views(engine: Engine) -> None:
    """Create or replace the views (none yet)."""
