"""The gate memo's digest (etl.quality.memo): equal batches, equal keys; any difference in
a value, a dtype, a suite or a parameter, another key. The memo's answers themselves are
compared with GX's in tests/test_quality_replica.py and tests/test_incremental.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from etl.quality.memo import GateMemo, batch_digest, uniqueness_key_columns
from etl.quality.suites import RuleOutcome

SUITE = {"name": "s", "expectations": [
    {"type": "expect_compound_columns_to_be_unique",
     "kwargs": {"column_list": ["snapshot_id", "division_id"]}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "division_id"}}]}


def frame(snapshot_id: str = "s1", votes: tuple[int, ...] = (1, 2, 3)) -> pd.DataFrame:
    return pd.DataFrame({
        "snapshot_id": pd.array([snapshot_id] * len(votes), dtype="string[pyarrow]"),
        "division_id": pd.array([str(i) for i in range(len(votes))], dtype="string[pyarrow]"),
        "votes": pd.array(votes, dtype="float64")})


def test_equal_batches_have_equal_keys_and_any_difference_another() -> None:
    memo = GateMemo()
    key = memo.key(SUITE, {"p": 1.0}, frame())
    assert key is not None and key == memo.key(SUITE, {"p": 1.0}, frame())
    others = [memo.key(SUITE, {"p": 1.0}, frame(votes=(1, 2, 4))),
              memo.key(SUITE, {"p": 1.0}, frame().astype({"votes": "Int64"})),
              memo.key(SUITE, {"p": 1.0}, frame().iloc[[1, 0, 2]].reset_index(drop=True)),
              memo.key(SUITE, {"p": 2.0}, frame()),
              memo.key({**SUITE, "name": "t"}, {"p": 1.0}, frame())]
    assert None not in others and len({key, *others}) == len(others) + 1


def test_a_constant_column_read_only_in_uniqueness_keys_is_digested_as_constant() -> None:
    assert uniqueness_key_columns(SUITE) == frozenset({"snapshot_id"})  # division_id: also elsewhere
    memo = GateMemo()
    assert memo.key(SUITE, {}, frame("s1")) == memo.key(SUITE, {}, frame("s2"))
    mixed = frame("s1")
    mixed.loc[2, "snapshot_id"] = "s2"  # no longer one value: digested value by value
    assert memo.key(SUITE, {}, mixed) != memo.key(SUITE, {}, frame("s1"))
    assert len({batch_digest(frame("s1")), batch_digest(frame("s2"))}) == 2  # not in such a suite


def test_a_chunked_arrow_column_is_digested_without_copying_it_whole() -> None:
    chunked = pa.chunked_array([["a", "b"], ["c"]])
    batch = pd.DataFrame({"division_id": pd.arrays.ArrowStringArray(chunked)})
    same = pd.DataFrame({"division_id": pd.arrays.ArrowStringArray(
        pa.chunked_array([["a", "b"], ["c"]]))})
    assert batch_digest(batch) is not None and batch_digest(batch) == batch_digest(same)
    other = pd.DataFrame({"division_id": pd.arrays.ArrowStringArray(
        pa.chunked_array([["a", "b"], ["d"]]))})
    assert batch_digest(other) != batch_digest(batch)


def test_the_memo_file_keeps_this_validations_outcomes_and_survives_damage(tmp_path: Path) -> None:
    path = tmp_path / "memo.json"
    memo = GateMemo.load(path)  # none yet: empty
    outcome = RuleOutcome("s", "C6", "one_row", "critical", (2, 5), {"column": "x"})
    memo.put("s", "k1", [outcome])
    memo.save()
    again = GateMemo.load(path)
    assert again.get("s", "k1") == [outcome] and again.get("s", "k2") is None
    assert (again.hits, again.misses) == (1, 1)
    again.save()  # only what this validation used
    assert GateMemo.load(path).get("s", "k1") == [outcome]
    GateMemo.load(path).save()  # a validation that used nothing leaves nothing
    assert GateMemo.load(path).get("s", "k1") is None
    path.write_text("{not json", encoding="utf-8")
    assert GateMemo.load(path).get("s", "k1") is None
    tupled = RuleOutcome("s", "C6", "one_row", "critical", (), {"column_list": ("a", "b")})
    memo.put("s", "k3", [tupled])  # JSON would give a list back: not remembered
    memo.save()
    assert GateMemo.load(path).get("s", "k3") is None


def test_columns_of_every_kind_differ_when_their_values_do() -> None:
    kinds = [
        (pd.Categorical(["a", "b"]), pd.Categorical(["a", "c"])),  # same codes, other labels
        (pd.array([1, None], dtype="Int64"), pd.array([1, 2], dtype="Int64")),
        (pd.Series(["x", None], dtype=object), pd.Series(["x", "y"], dtype=object)),
        (pd.array([True, False]), pd.array([True, True])),
        (pd.to_datetime(["2021-11-28", "2021-11-29"]), pd.to_datetime(["2021-11-28", "2021-11-30"])),
        (pd.array(["a", "b"], dtype="string[pyarrow]")[1:],  # slices of Arrow buffers
         pd.array(["a", "c"], dtype="string[pyarrow]")[1:]),
    ]
    for one, other in kinds:
        a, b = pd.DataFrame({"c": one}), pd.DataFrame({"c": other})
        assert batch_digest(a) is not None and batch_digest(a) == batch_digest(a.copy()), one
        assert batch_digest(a) != batch_digest(b), (one, other)


def test_a_memo_that_cannot_be_written_is_left_not_fatal(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the state directory should be", encoding="utf-8")
    memo = GateMemo(blocked / "memo.json")
    memo.put("s", "k1", [RuleOutcome("s", "C6", "one_row", "critical", (), {"column": "x"})])
    memo.save()  # logged, not raised
    assert not (blocked / "memo.json").exists()
