"""farm.pools.places: why `farm up` cannot make its files where it is told, in words that
point at the cause (the config check's own rules catch most of these first)."""

from __future__ import annotations

from pathlib import Path

from farm.pools.places import unwritable_directory


def test_a_directory_under_a_file_is_said_to_be_under_one(tmp_path: Path) -> None:
    # It said "is not writable by this user": the mode of a file, looked at for nothing.
    (tmp_path / "afile").write_text("")
    assert unwritable_directory(str(tmp_path / "afile/farm")) == (
        f"cannot create {tmp_path}/afile/farm: {tmp_path}/afile exists and is not a directory"
    )
    assert unwritable_directory(str(tmp_path / "afile")) == (
        f"{tmp_path}/afile exists and is not a directory"
    )
    assert unwritable_directory(str(tmp_path / "new/farm")) is None
