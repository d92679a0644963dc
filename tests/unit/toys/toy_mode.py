"""A toy network mode that lives in tests only: proof that a mode is one module
plus its bash, added without editing any file of the product.

It owns one profile section (``toy``), adds a stage before CVMFS (``toy``),
a setting, a configuration file, a keepalive leg, an environment variable for
the payload and a layer around it (lib: toy.sh, beside this file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tardis_netadapter.modes import ConfigFile, Mode, SettingsGroup, Stage
from tardis_netadapter.profile import NetworkProfile

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Toy:
    """The toy mode's section: what its stage says and a number it checks."""

    greeting: str = "hello"
    level: int = 1

    def check(self, path: str) -> list[str]:
        if self.level > 0:
            return []
        return [f"{path}.level: got {self.level!r}; expected a level above 0"]


@dataclass(frozen=True)
class ToyProfile(NetworkProfile):
    toy: Toy = field(default_factory=Toy)


class ToyMode(Mode):
    name = "toy"
    summary = "a mode for tests"
    profile_class = ToyProfile
    stages = (Stage("toy", "toy_stage", phase="network"),)

    def legs(self, profile, budget):
        return [("worker -> toy", "nothing at all")]

    def libraries(self, profile):
        return [HERE / "toy.sh"]

    def settings(self, profile, budget):
        return [SettingsGroup("toy", (("TOY_GREETING", profile.toy.greeting),))]

    def config_files(self, profile, budget):
        return [ConfigFile("write_toy_conf", f"level = {profile.toy.level}\n")]

    def probe_lines(self, profile):
        return ["mark toy ok here"]

    def probe_fix(self, name):
        return "feed the toy" if name == "toy" else None


MODE = ToyMode()
