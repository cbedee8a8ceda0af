"""Atomic writes and folders published whole."""

import os

import pytest

from unmask import files
from unmask.files import atomic_write_text, building_path, publish_folder, recover_folder


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "summary.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_publish_folder_replaces_a_folder_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    for version in ("v1", "v2"):
        building = building_path(target)
        building.mkdir()
        (building / "weights").write_text(version)
        publish_folder(building, target)
        assert (target / "weights").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "nothing left aside"


def test_building_paths_are_per_process_and_hidden(tmp_path):
    path = building_path(tmp_path / "store")
    assert path.name.startswith(".store.") and str(os.getpid()) in path.name


def test_recover_folder_puts_back_an_old_folder_a_crash_left_aside(tmp_path):
    aside = tmp_path / ".model.replaced-123"
    aside.mkdir()
    (aside / "weights").write_text("old")
    recover_folder(tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "old"
    recover_folder(tmp_path / "model")  # nothing to do the second time
    assert (tmp_path / "model").is_dir()
