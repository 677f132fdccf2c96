"""RunFolder: the one place that knows a run folder's layout."""

from lunet.experiments.store.folder import RESULT_FILES, RunFolder


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_checkpoints_lists_the_runs_own_and_each_class_folders_only(tmp_path):
    run = RunFolder(tmp_path)
    assert run.checkpoints() == []
    run.run_file.write_text('{"kind": "per_class"}')  # the record names the class folders
    own = _touch(run.checkpoint)
    c2 = _touch(run.class_folder(2).checkpoint)
    c0 = _touch(run.class_folder(0).checkpoint)
    _touch(run.class_folder(1).metrics)  # a class folder without a checkpoint
    _touch(tmp_path / "other" / "checkpoint.pt")  # not part of the layout
    _touch(tmp_path / "class-old" / "checkpoint.pt")  # nor a folder the record names
    assert run.checkpoints() == [own, c0, c2]
    run.run_file.write_text('{"kind": "unconditional"}')
    assert run.checkpoints() == [own]


def test_clear_removes_what_a_training_wrote_and_nothing_else(tmp_path):
    run = RunFolder(tmp_path)
    written = [run.checkpoint, run.metrics, run.run_file, run.class_folder(3).checkpoint,
               run.class_folder(3).metrics, *(tmp_path / name for name in RESULT_FILES)]
    for path in written:
        _touch(path)
    run.run_file.write_text('{"kind": "per_class"}')
    kept = [_touch(tmp_path / "notes.txt"), _touch(run.class_folder(3).path / "samples.png"),
            _touch(tmp_path / "class-old" / "checkpoint.pt"), _touch(tmp_path / "starts" / "metrics.jsonl")]
    run.clear()
    assert not any(p.exists() for p in written)
    assert all(p.exists() for p in kept)


def test_the_layout_names_its_files(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert (run.run_file.name, run.checkpoint.name, run.metrics.name) == ("run.json", "checkpoint.pt", "metrics.jsonl")
    assert run.class_folder(7).path == tmp_path / "r" / "class-7"
