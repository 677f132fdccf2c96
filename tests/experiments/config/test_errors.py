"""The experiment side's errors (lunet.experiments.config.errors): settings named for Python and for the
command line, and kept across processes."""

import pickle

from lunet.cli import flag
from lunet.experiments.config.errors import RunExists, SettingError


def test_a_settings_error_names_settings_for_python_and_for_the_command_line():
    error = SettingError("{batch_size} {size} is below {world} processes; lower {lr} or pass {resume}", size=2, world=3)
    assert str(error) == "batch_size 2 is below 3 processes; lower lr or pass resume=True"
    assert error.render(flag) == "--batch-size 2 is below 3 processes; lower --lr or pass --resume"
    assert error.settings == ("batch_size", "lr", "resume")
    again = pickle.loads(pickle.dumps(error))  # as it travels between the processes of a run
    assert type(again) is SettingError and again.render(flag) == error.render(flag)
    exists = RunExists("{path} exists; pass {overwrite}", path="/runs/{odd}")
    assert isinstance(exists, FileExistsError) and str(exists) == "/runs/{odd} exists; pass overwrite=True"
    assert flag("class_label") == "--class"
