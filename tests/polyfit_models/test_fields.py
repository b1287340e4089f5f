"""The job's one declaration (``polyfit_models.fields``) and the three things that must keep in
step with it by hand: ``JobSpec``'s attributes (each with its check), ``JobRecord``'s columns (each
with its SQL type) and the store's row. Everything else derives its list of columns from it."""

from __future__ import annotations

import dataclasses

import pytest

from polyfit_models import JobSpec
from polyfit_models import fields as F
from store.records import JobRecord
from store.rows import JOB_COLUMNS, JobRow


def test_the_spec_holds_every_setting_but_the_device():
    spec = [f.name for f in dataclasses.fields(JobSpec)]
    assert set(spec) == set(F.SETTINGS) - {"device"}
    assert [n for n in F.SETTINGS if n != "device"] == [n for n in F.SETTINGS if n in spec]


def test_the_table_has_a_column_for_every_stored_field_and_no_other():
    assert {c.name for c in JobRecord.__table__.columns} == set(F.names(computed=False))


def test_the_row_is_the_declaration():
    assert JOB_COLUMNS == F.ROW
    assert tuple(f.name for f in dataclasses.fields(JobRow)) == F.ROW


@pytest.mark.parametrize("field", F.FIELDS, ids=lambda f: f.name)
def test_a_field_is_consistent(field):
    assert field.role in ("key", "setting", "outcome", "run")
    assert field.shown <= set(F.VIEWS)
    if field.axis or field.ranged or field.later:
        assert field.role == "setting"
    if field.ranged:
        assert field.axis and field.type in (int, float)
    if field.computed:
        assert not (field.row or field.reused or field.result)
    column = JobRecord.__table__.c.get(field.name)
    if column is not None:  # the declared type is the column's (JSON holds the lists)
        assert column.type.python_type is (object if field.type is list else field.type)


def test_each_list_of_columns_is_derived():
    assert F.AXES == ("variant", "lr", "degree", "seed", "epochs", "optimizer", "device")
    assert F.RANGE_AXES == ("lr", "degree", "seed", "epochs")
    assert set(F.VARIANT_AXES) == {"lr", "degree", "seed", "epochs", "optimizer", "dtype",
                                   "device"}
    assert F.LATER == ("stop_gap",)
    # Each job of a batch has its own lr, seed and stop_gap; every other setting is shared.
    assert set(F.BATCH_KEY) == set(F.SETTINGS) - {"lr", "seed", "stop_gap", "device"}
    assert "error" in F.RESULT and "error" not in F.REUSED  # an error is never reused
    assert "attempts" not in F.REUSED  # a reused row was not attempted here


def test_names_refuses_a_view_that_does_not_exist():
    with pytest.raises(ValueError, match="no view"):
        F.names(shown="nowhere")
