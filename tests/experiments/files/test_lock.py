"""The lock of a run folder (lunet.experiments.files.lock): held once, even within one process, and a
lock file that names its holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lunet.experiments.files.lock import RunFolderBusy
from lunet.experiments.store.folder import RunFolder


def _locked_elsewhere(folder: Path) -> bool:
    """Whether another process is refused the lock on ``folder`` now."""
    probe = subprocess.run(
        [sys.executable, "-c",
         f"from lunet.experiments.store.folder import RunFolder\nwith RunFolder({str(folder)!r}).locked(): pass"],
        capture_output=True, text=True,
    )
    return probe.returncode != 0 and "RunFolderBusy" in probe.stderr


def test_a_folder_is_locked_once_within_one_process(tmp_path):
    folder = tmp_path / "run"
    with RunFolder(folder).locked():
        with pytest.raises(RunFolderBusy, match="locked by this process already"):
            with RunFolder(folder).locked():
                pass
        assert _locked_elsewhere(folder)  # the refused second hold does not release the first
    assert not _locked_elsewhere(folder)


def test_the_lock_file_names_its_holder(tmp_path):
    with RunFolder(tmp_path / "run").locked() as folder:
        record = json.loads((folder / ".lock").read_text())
    assert record["pid"] == os.getpid() and record["host"]
