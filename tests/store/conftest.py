"""The store's tests run against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import pytest

from store import create_schema, make_engine
from tests.conftest import pg_schema


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """A fresh results database with its schema, on each backend."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
        create_schema(eng)
        yield eng
        eng.dispose()
        return
    with pg_schema() as url:
        eng = make_engine(url)
        create_schema(eng)
        yield eng
        eng.dispose()
