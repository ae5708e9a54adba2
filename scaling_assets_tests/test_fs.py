"""Atomic writes: the target is the old content or the new one whole, and failures leave no temporaries."""

import pytest

from scaling_assets.fs import atomic_directory, atomic_file, write_json_atomic


def test_atomic_file_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    with atomic_file(path) as tmp:
        tmp.write_text("a\n1\n")
        assert not path.exists()  # nothing at the target until the write is done
    assert path.read_text() == "a\n1\n"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "a\n1\n"
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"]  # no temporary left
    write_json_atomic(path, {"x": 1})
    assert path.read_text() == '{"x": 1}'


def test_atomic_directory_swaps_whole_folders(tmp_path):
    path = tmp_path / "model"
    with atomic_directory(path) as tmp:
        (tmp / "old.npy").write_text("1")
    with pytest.raises(ValueError), atomic_directory(path) as tmp:
        (tmp / "new.npy").write_text("2")
        raise ValueError("fit failed")
    assert [p.name for p in path.iterdir()] == ["old.npy"]
    with atomic_directory(path) as tmp:
        (tmp / "new.npy").write_text("2")
    assert [p.name for p in path.iterdir()] == ["new.npy"]  # nothing of the old folder is left
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
