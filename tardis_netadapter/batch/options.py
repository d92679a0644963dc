"""Extra command-line options in TARDIS's ``short``/``long`` form, for any batch system.

TARDIS's own adapters (Slurm, Moab) take ``SubmitOptions`` and
``StatusUpdateOptions`` as ``{short: {...}, long: {...}}``; operators copy
them over, so every driver reads them the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

_OPTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class OptionSet:
    """Extra command-line options in TARDIS's ``short``/``long`` form.

    ``short: {q: normal}`` becomes ``-q normal``; ``long: {qos: normal}``
    becomes ``--qos=normal``; a null value gives a bare flag.
    """

    short: dict[str, Optional[str]] = field(default_factory=dict)
    long: dict[str, Optional[str]] = field(default_factory=dict)

    def check(self, path: str) -> list[str]:
        problems = []
        for name in self.short:
            if len(name) != 1 or not _OPTION_NAME.fullmatch(name):
                problems.append(
                    f"{path}.short.{name}: not a short option; expected one "
                    "letter or digit (use long: for --name=value options)"
                )
        for name in self.long:
            if not _OPTION_NAME.fullmatch(name):
                problems.append(
                    f"{path}.long.{name}: not an option name; expected letters, "
                    "digits, '-' or '_' such as 'qos' or 'account'"
                )
        return problems

    def tokens(self) -> list[str]:
        """Argv tokens: names as given, values kept as separate/`=` joined words."""
        words: list[str] = []
        for name, value in self.short.items():
            words.append(f"-{name}")
            if value is not None:
                words.append(value)
        for name, value in self.long.items():
            words.append(f"--{name}" if value is None else f"--{name}={value}")
        return words
