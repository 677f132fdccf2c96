"""The experiment side's errors and their one-line messages.

Nothing here imports torch, so that ``lunet --help`` can show the defaults at once.
"""

from __future__ import annotations

import re
import string
from typing import Callable

__all__ = ["SWITCHES", "python_name", "NamesSettings", "SettingError", "RunExists", "NothingToResume",
           "first_sentence", "error_line"]

# Settings given as switches: a Python caller passes ``name=True``
SWITCHES = ("resume", "overwrite", "drop_constant")


def python_name(setting: str) -> str:
    """How a Python caller gives ``setting``: a keyword argument or a field of :class:`TrainConfig`."""
    return f"{setting}=True" if setting in SWITCHES else setting


class NamesSettings(Exception):
    """An error whose message names settings (``lr``, ``resume``) in the words of whoever gave them.

    ``template`` holds a ``{setting}`` field for each setting it names and a field for each of
    ``values`` (put in as they are). ``str()`` names the settings as a Python caller gives them
    (:func:`python_name`); the command line names them as its flags with :meth:`render`.
    """

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        self.settings = tuple(dict.fromkeys(
            field for _, field, _, _ in string.Formatter().parse(template) if field and field not in values))
        super().__init__(self.render(python_name))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each setting named by ``name(setting)``."""
        return self.template.format(**self.values, **{s: name(s) for s in self.settings})

    def __reduce__(self) -> tuple:
        # rebuilt from its parts, so that another process (torch.distributed) renders it as this one would
        return _rebuild, (type(self), self.template, self.values)


def _rebuild(cls: type, template: str, values: dict) -> "NamesSettings":
    return cls(template, **values)


class SettingError(NamesSettings, ValueError):
    """A setting that cannot be used as given; the message says which and what to give instead."""


class RunExists(NamesSettings, FileExistsError):
    """A new run would replace one already in its folder."""


class NothingToResume(NamesSettings, FileNotFoundError):
    """A resume asked for where no checkpoint is."""



def first_sentence(exc: BaseException) -> str:
    """The first sentence of an error message, short enough for a one-line report."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.split(r"(?<=[.?!])\s", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= 120 else text[:117] + "..."


def error_line(exc: BaseException) -> str:
    """``Type: first sentence`` of an error, for the one line that reports a failure worked around."""
    return f"{type(exc).__name__}: {first_sentence(exc)}" if str(exc).strip() else type(exc).__name__
