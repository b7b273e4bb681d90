"""Table contracts: every table round-trips; bad data is rejected naming the column;
interrupted writes never leave a file at the final path."""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.atomic import atomic_path, is_partial, remove_stale_partials
from tasks.errors import SchemaError
from tasks.catalog import load_catalog
from tasks.schema import CLOSED, FEATURE_IDS, TABLES, empty_table, read_table, validate, write_table


def _sample(typ: pa.DataType, i: int):
    if pa.types.is_string(typ):
        return f"v{i}"
    if pa.types.is_boolean(typ):
        return i % 2 == 0
    if pa.types.is_integer(typ):
        return i + 1
    if pa.types.is_floating(typ):
        return i + 0.5
    if pa.types.is_timestamp(typ):
        return dt.datetime(2026, 1, 1, 12, 0, i, tzinfo=dt.timezone.utc)
    if pa.types.is_list(typ):
        return [_sample(typ.value_type, i), _sample(typ.value_type, i + 1)]
    raise AssertionError(f"no sample for {typ}")


def _allowed(name: str, column: str) -> tuple[str, ...]:
    allowed = CLOSED[name][column]
    return load_catalog().ids if allowed == FEATURE_IDS else allowed


def sample_rows(name: str, n: int = 3) -> list[dict]:
    closed = CLOSED.get(name, {})
    return [{f.name: _allowed(name, f.name)[i % len(_allowed(name, f.name))] if f.name in closed
             else _sample(f.type, i) for f in TABLES[name]} for i in range(n)]


@pytest.mark.parametrize("name, column", [(n, c) for n, cols in sorted(CLOSED.items()) for c in cols])
def test_a_value_outside_a_closed_set_is_refused_naming_it(name, column):
    """An unknown feature id or status must not pass: it would vanish from every summary by the known ones."""
    rows = sample_rows(name)
    rows[1][column] = "close_eyes_typo"
    with pytest.raises(SchemaError, match=f"{column}.*'close_eyes_typo'"):
        validate(name, rows)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_round_trips_through_parquet_polars_and_pandas(name, tmp_path):
    rows = sample_rows(name)
    path = write_table(name, rows, tmp_path / f"{name}.parquet")
    back = read_table(name, path)
    assert back.schema.equals(TABLES[name], check_metadata=False)
    assert back.to_pylist() == validate(name, rows).to_pylist()
    assert pl.read_parquet(path).height == len(rows)
    assert list(pd.read_parquet(path).columns) == TABLES[name].names
    # polars and pandas frames are accepted back as inputs
    assert validate(name, pl.read_parquet(path)).num_rows == len(rows)
    assert validate(name, pd.read_parquet(path)).num_rows == len(rows)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_empty_tables_are_valid(name, tmp_path):
    path = write_table(name, empty_table(name), tmp_path / "e.parquet")
    assert read_table(name, path).num_rows == 0
    assert write_table(name, [], tmp_path / "e2.parquet").exists()


def test_wrong_type_names_the_column():
    rows = sample_rows("windows")
    rows[1]["t_end_s"] = "thirty"
    with pytest.raises(SchemaError, match=r"'windows'.*column 't_end_s'.*double"):
        validate("windows", rows)


def test_unexpected_and_missing_columns_are_named():
    rows = sample_rows("frames")
    rows[0]["pts_ms"] = 1
    for r in rows[1:]:
        r["pts_ms"] = 2
    with pytest.raises(SchemaError, match="unexpected column 'pts_ms'"):
        validate("frames", rows)
    rows = [{k: v for k, v in r.items() if k != "pts_s"} for r in sample_rows("frames")]
    with pytest.raises(SchemaError, match="missing column 'pts_s'"):
        validate("frames", rows)


def test_null_in_required_column_is_named_but_nullable_is_fine():
    rows = sample_rows("answers")
    rows[0]["present"] = None  # nullable: unparsed answers have no yes/no
    validate("answers", rows)
    rows[0]["feature_id"] = None
    with pytest.raises(SchemaError, match="column 'feature_id' is required"):
        validate("answers", rows)


def test_lossy_cast_is_rejected_lossless_is_accepted():
    tbl = validate("frames", {"recording_id": ["r"], "frame_index": pa.array([3], pa.int64()), "pts_s": [1]})
    assert tbl.schema.field("frame_index").type == pa.int32()
    with pytest.raises(SchemaError, match="frame_index"):
        validate("frames", {"recording_id": ["r"], "frame_index": pa.array([2**40], pa.int64()), "pts_s": [1.0]})
    with pytest.raises(SchemaError, match="frame_index"):
        validate("frames", {"recording_id": ["r"], "frame_index": [1.5], "pts_s": [1.0]})


def test_unknown_table_is_a_clear_error():
    with pytest.raises(SchemaError, match="unknown table 'framez'"):
        validate("framez", [])


def test_exception_midway_leaves_nothing_and_keeps_previous_version(tmp_path):
    final = tmp_path / "manifest.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"PAR1 half a file")
            raise RuntimeError("disk full")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    write_table("frames", sample_rows("frames"), final)
    good = final.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"garbage")
            raise RuntimeError("killed")
    assert final.read_bytes() == good


def test_sigkill_during_write_leaves_nothing_at_final_path(tmp_path):
    final = tmp_path / "frames.parquet"
    child = textwrap.dedent(
        f"""
        import sys, time
        from tasks.atomic import atomic_path
        with atomic_path({str(final)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"PAR1" + b"x" * 1_000_000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not final.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and is_partial(leftovers[0])
    with pytest.raises(SchemaError, match="no file"):
        read_table("frames", final)
    assert remove_stale_partials(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_written_file_is_plain_parquet_with_contract_schema(tmp_path):
    path = write_table("windows", sample_rows("windows"), tmp_path / "w.parquet")
    assert pq.read_schema(path).names == TABLES["windows"].names
