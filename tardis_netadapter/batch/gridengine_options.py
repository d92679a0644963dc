"""The Grid Engine keys of a machine type: validated values and the qsub words they give.

Grid Engine (Son of Grid Engine 8.1.9, Univa/Altair GE, Sun GE 6.2) takes
every option with one dash, long names included (``-pe``, ``-wd``), so
``SubmitOptions`` keeps TARDIS's ``{short: ..., long: ...}`` form for
familiarity but renders both as ``-name value`` (:func:`option_words`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from ..machine import MachineMetaData
from .options import OptionSet

#: qsub options the adapter sets itself, by option name -> the key that sets it.
#: A SubmitOptions entry for one of them is refused with this key in the message.
OWNED = {
    "N": "(the drone uuid)",
    "S": "(always /bin/bash: the drone script is bash)",
    "v": "(the drone environment and the site's export_environment)",
    "V": "(never: the daemon's environment, tokens included, stays out of the job)",
    "terse": "(always set: the job id is read from it)",
    "q": "Queue",
    "pe": "ParallelEnvironment/Slots",
    "P": "Project",
    "t": "(never: a drone is one job, not an array)",
    "sync": "(never: qsub would wait for the drone to end)",
    "b": "(never: the drone script is sent on stdin)",
    "@": "(never: options come from the configuration only)",
}
#: qsub options that submit the job held (state ``hqw``): a held drone maps to
#: Stopped and TARDIS cleans it up (qdel) at once, so they are refused
HOLDING = {
    "h": "submits the job held",
    "hold_jid": "holds the job until other jobs end",
    "hold_jid_ad": "holds the job's tasks until other tasks end",
}
#: resources of ``-l`` the adapter requests itself (refused inside SubmitOptions' -l)
OWNED_RESOURCES = {
    "h_rt": "Walltime",
    "s_rt": "Walltime",
    "h_vmem": "MemoryPerSlot",
    "mem_free": "MemFree",
}

#: hours:minutes:seconds as Grid Engine's time specifier writes them (``1::1`` allowed)
_HMS = re.compile(r"(\d*):(\d*):(\d*)")
#: a Grid Engine memory specifier with a unit (sge_types(5): K/M/G = 1024^n, k/m/g = 1000^n)
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)([KkMmGg])")
_UNIT = {
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
}
#: a queue list, PE or project as qsub takes it: no blank, comma only in queue lists
_WORD = re.compile(r"[^\s,]+")
_QUEUES = re.compile(r"[^\s,]+(?:,[^\s,]+)*")


def walltime_seconds(walltime: str) -> int:
    """Seconds of ``hours:minutes:seconds`` (Grid Engine's time form, ``h_rt``).

    A bare number is refused although Grid Engine reads it as seconds: Slurm
    reads the same number as minutes, and a Slurm configuration copied over
    would give one-minute drones.
    """
    match = _HMS.fullmatch(str(walltime).strip())
    if not match:
        raise ValueError(
            f"got {walltime!r}; expected hours:minutes:seconds such as 48:00:00 "
            "(h_rt; a bare number would be seconds to Grid Engine but minutes to "
            "Slurm, so write it out)"
        )
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"got {walltime!r}; expected a time limit above zero")
    return total


def memory_bytes(text: str) -> int:
    """Bytes of a Grid Engine memory value with a unit (``4G``, ``3500M``, ``2.5G``)."""
    match = _MEMORY.fullmatch(str(text).strip())
    if not match:
        raise ValueError(
            f"got {text!r}; expected a number with a unit K, M or G (1024-based) or "
            "k, m or g (1000-based), such as 4G or 3500M (a bare number would be bytes)"
        )
    return int(float(match.group(1)) * _UNIT[match.group(2)])


def hms(seconds: int) -> str:
    """``H:MM:SS`` for h_rt (what ``qstat -j`` and operators read)."""
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class GridEngineMachineType:
    """The Grid Engine keys of ``Site.MachineTypeConfiguration.<machine type>``.

    ``Walltime`` is required (``-l h_rt``): drones need a finite life.
    ``ParallelEnvironment`` is required for drones of more than one core
    (``-pe <name> <Slots>``, Slots defaulting to ``MachineMetaData.Cores``):
    without it Grid Engine gives one slot. ``MemoryPerSlot`` (``h_vmem``, per
    slot in Grid Engine) and ``MemFree`` (``mem_free``) are passed as written;
    MemoryPerSlot times the slots must cover ``MachineMetaData.Memory`` (the
    drone advertises that much, and h_vmem kills a job above it).
    """

    Walltime: str
    Queue: Optional[str] = None
    ParallelEnvironment: Optional[str] = None
    Slots: Optional[int] = None
    MemoryPerSlot: Optional[str] = None
    MemFree: Optional[str] = None
    Project: Optional[str] = None
    SubmitOptions: OptionSet = field(default_factory=OptionSet)

    def check(self, path: str) -> list[str]:
        problems: list[str] = []
        try:
            walltime_seconds(self.Walltime)
        except ValueError as error:
            problems.append(f"{path}.Walltime: {error}")
        for key, pattern, example in (
            ("Queue", _QUEUES, "long or 'long,short' or 'long@@hostgroup'"),
            ("ParallelEnvironment", _WORD, "smp (qconf -spl lists them)"),
            ("Project", _WORD, "a project from qconf -sprjl"),
        ):
            value = getattr(self, key)
            if value is not None and not pattern.fullmatch(value):
                problems.append(
                    f"{path}.{key}: got {value!r}; expected a name without blanks, "
                    f"such as {example}; remove the key for the site's default"
                )
        if self.Slots is not None:
            if self.Slots < 1:
                problems.append(
                    f"{path}.Slots: got {self.Slots!r}; expected a whole number >= 1 "
                    "(slots of the parallel environment); remove it to use "
                    "MachineMetaData.Cores"
                )
            if self.ParallelEnvironment is None:
                problems.append(
                    f"{path}.Slots: set without ParallelEnvironment; slots are "
                    "requested through a parallel environment (-pe NAME SLOTS): "
                    "add ParallelEnvironment or remove Slots"
                )
        for key in ("MemoryPerSlot", "MemFree"):
            value = getattr(self, key)
            if value is not None:
                try:
                    memory_bytes(value)
                except ValueError as error:
                    problems.append(f"{path}.{key}: {error}")
        problems += self._check_submit_options(path)
        return problems

    def _check_submit_options(self, path: str) -> list[str]:
        problems = []
        options = self.SubmitOptions
        for form, names in (("short", options.short), ("long", options.long)):
            for name, value in names.items():
                where = f"{path}.SubmitOptions.{form}.{name}"
                if name in OWNED:
                    problems.append(
                        f"{where}: set by the adapter from {OWNED[name]}; remove it here"
                    )
                elif name in HOLDING:
                    problems.append(
                        f"{where}: {HOLDING[name]}; a held drone is Stopped to "
                        "TARDIS, which cancels it at once (docs/adapter.md, Grid "
                        "Engine job states): remove it here"
                    )
                elif name == "l":
                    for resource in (value or "").split(","):
                        key = resource.split("=", 1)[0].strip()
                        if key in OWNED_RESOURCES:
                            problems.append(
                                f"{where}: requests {key}, which the adapter sets from "
                                f"{OWNED_RESOURCES[key]}; set that key instead"
                            )
        return problems

    def check_with(self, meta_data: MachineMetaData, path: str) -> list[str]:
        """What contradicts the machine type's ``MachineMetaData`` (cores, memory)."""
        problems = []
        if meta_data.Cores > 1 and self.ParallelEnvironment is None:
            problems.append(
                f"{path}.ParallelEnvironment: missing for a drone of "
                f"{meta_data.Cores} cores (MachineMetaData.Cores); without a parallel "
                "environment Grid Engine gives one slot. Name the site's shared-memory "
                "PE (qconf -spl; often smp or threaded)"
            )
        if self.MemoryPerSlot is not None:
            try:
                per_slot = memory_bytes(self.MemoryPerSlot)
            except ValueError:
                return problems  # reported by check()
            slots = self.slots(meta_data)
            needed = meta_data.Memory * 1024**3
            if per_slot * slots < needed:
                problems.append(
                    f"{path}.MemoryPerSlot: got {self.MemoryPerSlot!r} x {slots} slots, "
                    f"less than MachineMetaData.Memory ({meta_data.Memory:g} GB) that "
                    "the drone advertises, and h_vmem ends a job above it; raise "
                    "MemoryPerSlot or lower Memory"
                )
        return problems

    def slots(self, meta_data: MachineMetaData) -> int:
        """Slots asked of the parallel environment: Slots, else the drone's cores."""
        return self.Slots if self.Slots is not None else meta_data.Cores

    @property
    def walltime_seconds(self) -> int:
        return walltime_seconds(self.Walltime)


def option_words(options: OptionSet) -> list[str]:
    """``-name value`` words for SubmitOptions: Grid Engine has no ``--name=value``."""
    words: list[str] = []
    for names in (options.short, options.long):
        for name, value in names.items():
            words.append(f"-{name}")
            if value is not None:
                words.append(value)
    return words
