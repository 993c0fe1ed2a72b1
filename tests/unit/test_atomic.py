"""atomic_path: a failed write leaves the previous file and no temporary behind."""

from __future__ import annotations

import pytest

from cellsam.utils.atomic import atomic_path, atomic_write_text


def test_success_replaces_and_failure_keeps_the_previous_file(tmp_path):
    final = tmp_path / "table.csv"
    atomic_write_text(final, "old")
    with pytest.raises(OSError, match="disk full"), atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".csv" and tmp != final
        tmp.write_text("half")
        raise OSError("disk full")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # not visible until complete
    assert final.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_failure_without_a_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_path(tmp_path / "x.png") as tmp:
        tmp.write_bytes(b"\x89PNG")
        raise ValueError("encoder failed")
    assert list(tmp_path.iterdir()) == []
