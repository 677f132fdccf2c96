"""Atomic writes (lunet.experiments.files.atomic): a file written whole or left as it was, no temporary
left behind, a link, FIFO or folder at the path refused, and SIGINT held back until the file is written."""

from __future__ import annotations

import os
import re
import signal
import stat
import threading

import pytest

from lunet.experiments.files.atomic import signals_deferred, stale_temporaries, write_atomic, write_text_atomic
from lunet.experiments.files.safe import UnsafeFile


def test_a_write_creates_the_folders_and_replaces_the_file_whole(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    assert write_text_atomic(path, "first\n") == path
    assert path.read_text() == "first\n"
    write_atomic(path, lambda f: (f.write(b"sec"), f.write(b"ond")))
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    write_text_atomic(path, "kept")

    def half_then_fail(f):
        f.write(b"half a file")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_write_to_disk_names_the_file_the_reason_and_that_it_is_unchanged(tmp_path):
    path = tmp_path / "out.txt"
    write_text_atomic(path, "kept")

    def full_disk(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=re.escape(f"could not write {path}: No space left on device; the file there "
                                                f"is unchanged")):
        write_atomic(path, full_disk)
    assert path.read_text() == "kept" and stale_temporaries(path) == []


def test_a_new_file_gets_the_permissions_of_any_other_new_file(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@pytest.mark.parametrize("kind", ["link", "fifo", "folder"])
def test_a_link_fifo_or_folder_at_the_path_is_refused_and_kept(kind, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's")
    path = tmp_path / "out.txt"
    if kind == "link":
        path.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(UnsafeFile, match=re.escape(f"refusing to write {path}")):
        write_text_atomic(path, "new")
    assert victim.read_text() == "someone else's"
    assert path.is_symlink() if kind == "link" else path.exists()
    assert stale_temporaries(path) == []


def test_stale_temporaries_are_those_of_the_path_alone(tmp_path):
    path = tmp_path / "checkpoint.pt"
    left = [tmp_path / "checkpoint.pt.a1b2c3d4.tmp", tmp_path / "checkpoint.pt.00000000.tmp"]
    for p in left + [tmp_path / "other.pt.a1b2c3d4.tmp", tmp_path / "checkpoint.pt"]:
        p.write_bytes(b"")
    assert stale_temporaries(path) == sorted(left)


def test_sigint_during_the_block_is_delivered_after_it(tmp_path):
    events = []

    def handler(signum, frame):
        events.append("handled")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            events.append("block done")
        assert events == ["block done", "handled"]
        assert signal.getsignal(signal.SIGINT) is handler  # the handler it had, back in place
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_the_block_runs_as_it_is():
    seen = []

    def run():
        with signals_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]
