"""What one drone provides and the ``TardisDrone*`` values its job gets, for any batch system.

``MachineMetaData`` is TARDIS's own per-machine-type table (cores, memory and
disk in GB); the environment follows TARDIS's ``SiteAdapter.drone_environment``
so the payload reads the same variables whichever batch system runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MachineMetaData:
    """``Site.MachineMetaData.<machine type>``: what one drone provides."""

    Cores: int = field(metadata={"format": "cores per drone, e.g. 8"})
    #: GB, as everywhere in TARDIS
    Memory: float = field(metadata={"format": "GB per drone, e.g. 16 or 0.5"})
    Disk: float = field(metadata={"format": "GB of scratch per drone, e.g. 20"})

    def check(self, path: str) -> list[str]:
        return [
            f"{path}.{key}: got {getattr(self, key)!r}; expected a number greater than 0"
            for key in ("Cores", "Memory", "Disk")
            if getattr(self, key) <= 0
        ]

    @property
    def memory_mb(self) -> int:
        """Slurm takes whole megabytes; like TARDIS, 1 GB = 1024 MB."""
        return int(self.Memory * 1024)


def drone_environment(
    drone_uuid: str,
    meta_data: MachineMetaData,
    translation: Mapping[str, float],
    walltime: int,
) -> dict[str, str]:
    """The ``TardisDrone*`` variables a drone's job gets, in the overlay batch system's units.

    Same semantics as TARDIS's ``SiteAdapter.drone_environment``: each meta
    data value times the batch system's translation factor (HTCondor: cores,
    MB, KB), whole numbers where possible; plus the uuid and the walltime in
    seconds (what a startd needs for its lifetime).
    """
    environment = {}
    for key in ("Cores", "Memory", "Disk"):
        try:
            factor = translation[key]
        except KeyError:
            raise ValueError(
                f"the batch system's translation mapping has no factor for {key}"
            ) from None
        value = getattr(meta_data, key) * factor
        environment[f"TardisDrone{key}"] = str(
            int(value) if float(value).is_integer() else value
        )
    environment["TardisDroneUuid"] = drone_uuid
    environment["TardisDroneWalltime"] = str(walltime)
    return environment
