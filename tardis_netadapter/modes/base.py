"""What a network mode is: the parts it adds to the profile, the budget and the script.

A network mode (how the payload reaches the pool: ``socks``, ``direct``, later
``vpn`` ...) is one Python module holding one :class:`Mode` object plus its
bash libraries. Everything the product does differently per mode asks that
object; nothing else names a mode. docs/modes.md has the recipe.

Why methods that take the profile (and not data): a mode's settings and files
depend on the site's values (a tunnel's forwards), and the renderer, the
keepalive budget and ``check`` each need a different view of them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from ..profile import NetworkProfile

if TYPE_CHECKING:  # hints only: keepalive asks the modes for their legs
    from ..keepalive import KeepaliveBudget

__all__ = ["ConfigFile", "Mode", "Setting", "SettingsGroup", "Stage"]

#: a bash variable or function name a mode may render
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Stage:
    """One step of the drone script's ``main()`` contributed by a mode.

    ``phase`` places it: ``network`` stages run after ``setup`` and before
    ``cvmfs`` (a tunnel the CVMFS proxy route needs), ``path`` stages after
    ``cvmfs`` and before the watchdog, container and payload (a chain that is
    probed end to end). A stage with ``skipped`` set has no function: main()
    logs ``stage NAME skipped: REASON`` (and the watchdog records it skipped),
    so a mode can say what it does not have. ``watched`` stages are in the
    heartbeat record, in the order the first failing one is blamed.
    """

    name: str
    function: str = ""
    phase: Literal["network", "path"] = "network"
    skipped: str = ""
    watched: bool = True

    def problems(self) -> list[str]:
        found = []
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", self.name):
            found.append(f"stage name {self.name!r}: expected lower-case letters")
        if bool(self.function) == bool(self.skipped):
            found.append(f"stage {self.name!r}: give a function or a skipped reason")
        if self.function and not NAME.fullmatch(self.function):
            found.append(f"stage {self.name!r}: bad function {self.function!r}")
        if self.phase not in ("network", "path"):
            found.append(f"stage {self.name!r}: phase {self.phase!r}")
        return found


#: one ``NAME=value`` of the settings block: str/int (quoted), bool (1/0) or a
#: list/tuple (a bash array)
Setting = tuple[str, Any]


@dataclass(frozen=True)
class SettingsGroup:
    """Settings rendered together under a ``# title`` line in the settings block."""

    title: str
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file carried in the script as a quoted here-document.

    The script gets a bash function ``function`` that prints ``text`` byte for
    byte; the mode's library writes it where it wants it.
    """

    function: str
    text: str


class Mode:
    """A network mode. Subclass it, set the class attributes, override what differs.

    ``profile_class`` is a frozen dataclass subclassing
    :class:`~tardis_netadapter.profile.NetworkProfile` whose extra fields are the
    mode's own sections (``socks``: ``tunnel``, ``chain``); its ``check()`` adds
    the mode's rules across sections. A section of another mode in a site's
    profile is refused (:meth:`refuse`).
    """

    #: the value of ``Network.mode``
    name: ClassVar[str] = ""
    #: one line for docs and ``check``
    summary: ClassVar[str] = ""
    profile_class: ClassVar[type[NetworkProfile]] = NetworkProfile
    #: the mode's steps in main(), in order (see :class:`Stage`)
    stages: ClassVar[tuple[Stage, ...]] = ()

    # -- the profile ---------------------------------------------------------

    def sections(self) -> tuple[str, ...]:
        """The profile keys this mode owns (the fields its profile class adds)."""
        common = {f.name for f in dataclasses.fields(NetworkProfile)}
        return tuple(
            f.name
            for f in dataclasses.fields(self.profile_class)
            if f.name not in common
        )

    def refuse(self, key: str, value: Any, path: str, chosen: str) -> list[str]:
        """Problems of this mode's section ``key`` written in a profile of mode
        ``chosen``; the key is then left out. Override to accept a value that
        means "not used" (socks accepts ``chain: {tool: none}``)."""
        return [
            f"{path}.{key}: belongs to mode {self.name!r}, but this site's mode "
            f"is {chosen!r}; remove {key}, or set mode: {self.name}"
        ]

    # -- the keepalive budget ------------------------------------------------

    def legs(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[tuple[str, str]]:
        """(leg, what protects it) for the mode's own legs, first in the budget."""
        return []

    def reconnect_delay(self, profile: NetworkProfile) -> int:
        """Worst case (s) the mode's supervisor takes to reconnect once the
        site answers again; the derived grace adds it (keepalive.py)."""
        return 0

    # -- the drone script ------------------------------------------------------

    def libraries(self, profile: NetworkProfile) -> list[Path]:
        """Bash files (absolute paths) inserted verbatim after lib/cvmfs.sh."""
        return []

    def settings(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[SettingsGroup]:
        """The mode's values in the settings block (read by its libraries)."""
        return []

    def config_files(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[ConfigFile]:
        """Configuration files the script carries for the mode's libraries."""
        return []

    def cvmfs_http_proxy(self, profile: NetworkProfile) -> str:
        """CVMFS_HTTP_PROXY as rendered; a mode with forwards resolves forward:NAME."""
        return profile.cvmfs.http_proxy

    # -- tardis-netadapter check -----------------------------------------------

    def warnings(self, profile: NetworkProfile) -> list[tuple[str, str]]:
        """(what, fix) for settings that work but weaken the site (offline check)."""
        return []

    def probe_lines(self, profile: NetworkProfile) -> list[str]:
        """POSIX sh lines for ``check --probe`` on the login node. They may call
        ``mark NAME ok|fail DETAIL`` and ``have COMMAND``; values must be quoted
        (shlex.quote, paths.shell_path)."""
        return []

    def probe_job_lines(self, profile: NetworkProfile) -> list[str]:
        """POSIX sh lines ``check --probe`` runs inside a short batch job on a
        worker (the batch driver's ``probe_job_command``), after the same
        ``mark``/``have`` functions: what only a worker can show (mode nat:
        the drone's route check, as the drone user). Empty: no job."""
        return []

    def probe_fix(self, name: str) -> Optional[str]:
        """The fix for a failed probe item ``name`` of this mode, or None."""
        return None

    # -- registration ------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is wrong with this mode object itself (checked by register)."""
        found = []
        if not re.fullmatch(r"[a-z][a-z0-9-]*", self.name or ""):
            found.append(f"mode name {self.name!r}: expected lower-case letters")
        if not (
            isinstance(self.profile_class, type)
            and issubclass(self.profile_class, NetworkProfile)
            and dataclasses.is_dataclass(self.profile_class)
        ):
            found.append(
                f"mode {self.name!r}: profile_class must subclass NetworkProfile"
            )
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            found.append(f"mode {self.name!r}: stage names repeat: {names}")
        for stage in self.stages:
            found += stage.problems()
        return found


def setting_names(groups: Sequence[SettingsGroup]) -> list[str]:
    """Every name a list of settings groups defines (for collision checks)."""
    return [name for group in groups for name, _ in group.settings]
