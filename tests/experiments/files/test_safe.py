"""Safe file input and output (lunet.experiments.files.safe): reads, appends and removals that never go
through a symbolic link or wait on a FIFO, the write probes that leave nothing behind, and a held run
folder that notices when it is no longer at its path."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from lunet.experiments.files.safe import (
    HeldFolder,
    RunFolderChanged,
    UnsafeFile,
    append_text,
    check_regular,
    check_subfolder,
    check_writable,
    check_writable_file,
    make_folder,
    open_folder,
    open_regular,
    read_text,
    remove_file,
    remove_names,
    unsafe_file_error,
)


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file that a planted link points at: it must never change."""
    path = tmp_path / "victim.txt"
    path.write_text("someone else's\n")
    return path


def test_the_refusal_names_the_path_and_what_is_there(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    error = unsafe_file_error(link, "write", os.lstat(link).st_mode)
    assert isinstance(error, UnsafeFile) and isinstance(error, ValueError)
    assert str(error).startswith(f"refusing to write {link}: it is a symbolic link;")
    assert "it is a folder" in str(unsafe_file_error(tmp_path, "read", os.lstat(tmp_path).st_mode))


def test_check_regular_takes_a_file_or_nothing_and_refuses_a_link_even_to_a_file(tmp_path, victim):
    assert check_regular(victim) == victim
    assert check_regular(tmp_path / "missing") == tmp_path / "missing"
    link = tmp_path / "link.txt"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        check_regular(link)
    with pytest.raises(UnsafeFile, match=re.escape(f"refusing to read {tmp_path}: it is a folder")):
        check_regular(tmp_path, "read")


def test_check_subfolder_takes_a_folder_or_nothing_and_refuses_a_file_or_a_link(tmp_path, victim):
    assert check_subfolder(tmp_path) == tmp_path
    assert check_subfolder(tmp_path / "starts") == tmp_path / "starts"
    linked = tmp_path / "class-3"
    linked.symlink_to(tmp_path, target_is_directory=True)
    for path, kind in ((victim, "not a regular file"), (linked, "a symbolic link")):
        with pytest.raises(UnsafeFile, match=re.escape(f"refusing to use {path}: it is {kind}, not a folder of "
                                                       f"this run")):
            check_subfolder(path)


def test_read_text_follows_a_link_to_a_file_and_refuses_a_fifo_without_waiting(tmp_path, victim):
    link = tmp_path / "link.txt"
    link.symlink_to(victim)
    assert read_text(link) == "someone else's\n"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFile, match=re.escape(f"refusing to read {fifo}: it is a FIFO")):
        read_text(fifo)  # no writer: a plain open would wait here for ever
    with pytest.raises(UnsafeFile, match="it is a folder"):
        read_text(tmp_path)


def test_append_text_creates_and_appends(tmp_path):
    path = tmp_path / "new" / "metrics.jsonl"
    append_text(path, "one\n")
    append_text(path, "two\n")
    assert path.read_text() == "one\ntwo\n"


def test_append_text_never_writes_through_a_link_or_into_a_hard_linked_file(tmp_path, victim):
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        append_text(link, "planted\n")
    hard = tmp_path / "hard.jsonl"
    os.link(victim, hard)
    with pytest.raises(UnsafeFile, match=re.escape(f"refusing to write {hard}: it has 2 hard links")):
        append_text(hard, "planted\n")
    assert victim.read_text() == "someone else's\n"


def test_open_regular_refuses_a_link_and_opens_a_file(tmp_path, victim):
    fd = open_regular(victim, os.O_RDONLY, "read")
    try:
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFile, match=re.escape(f"refusing to read {link}")):
        open_regular(link, os.O_RDONLY, "read")


def test_the_write_probes_leave_nothing_behind(tmp_path, victim):
    folder = tmp_path / "out" / "deeper"
    assert check_writable(folder) == folder and folder.is_dir() and list(folder.iterdir()) == []
    with pytest.raises(ValueError, match=re.escape(f"{victim} exists and is not a folder")):
        check_writable(victim)
    target = tmp_path / "later" / "result.json"
    assert check_writable_file(target) == target and not target.exists()
    assert check_writable_file(victim) == victim and victim.read_text() == "someone else's\n"
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        check_writable_file(tmp_path)
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFile):
        check_writable_file(link)


def test_removals_take_a_link_not_its_target_and_only_the_names_given(tmp_path, victim):
    link = tmp_path / "link.txt"
    link.symlink_to(victim)
    remove_file(link)
    assert not os.path.lexists(link) and victim.exists()
    remove_file(tmp_path / "missing.txt")  # nothing there: nothing to do
    run = tmp_path / "run"
    make_folder(run / "starts")
    for name in ("checkpoint.pt", "metrics.jsonl", "notes.txt"):
        (run / "starts" / name).write_text("x")
    remove_names(run, run / "starts", ["checkpoint.pt", "metrics.jsonl", "absent.pt"])
    assert [p.name for p in (run / "starts").iterdir()] == ["notes.txt"]


def test_a_folder_reached_from_a_root_is_never_a_link(tmp_path, victim):
    run = tmp_path / "run"
    run.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "checkpoint.pt").write_text("another run's")
    (run / "starts").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeFile, match="not a folder of this run"):
        remove_names(run, run / "starts", ["checkpoint.pt"])
    assert (elsewhere / "checkpoint.pt").read_text() == "another run's"
    with open_folder(run / "fresh", create=True, root=run) as folder:
        assert folder.mode("anything") is None
    assert (run / "fresh").is_dir()


def test_a_held_folder_knows_its_parts_and_whether_it_is_still_in_place(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    st = os.stat(path)
    held = HeldFolder(path, path.resolve(), None, (st.st_dev, st.st_ino))
    assert held.parts_of(path / "class-3" / "checkpoint.pt") == ("class-3", "checkpoint.pt")
    assert held.parts_of(path) == ()
    assert held.parts_of(tmp_path / "other") is None
    held.check_in_place()
    path.rename(tmp_path / "moved")
    path.mkdir()  # another folder at the same path
    with pytest.raises(RunFolderChanged, match=re.escape(f"the run folder {path} was removed, renamed or replaced")):
        held.check_in_place()
