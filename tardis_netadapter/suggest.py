"""What an operator most likely meant: the closest allowed name, and TARDIS keys we replace.

Operators copy site sections from TARDIS's own Slurm adapter and type keys
by hand; a message that lists twenty allowed keys makes them hunt for the one
they meant. :func:`did_you_mean` names it (a case slip such as ``walltime``
or ``Netslurm`` first, then :mod:`difflib`'s closest spelling), and
:data:`STOCK_SLURM_KEYS` says what replaces each key of TARDIS's stock
``SlurmAdapter`` (tardis/adapters/sites/slurm.py) that this adapter does not
take, instead of only calling it unknown.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Optional

#: keys of TARDIS's stock Slurm adapter (site section or a machine type's
#: MachineTypeConfiguration) that this adapter does not take, with what
#: replaces each. The stock adapter's Walltime, Partition, SubmitOptions,
#: TerminateOptions and executor are taken as they are.
STOCK_SLURM_KEYS: dict[str, str] = {
    "StartupCommand": (
        "a key of TARDIS's stock Slurm adapter: here the adapter renders the "
        "drone script itself from Network (its payload is "
        "Network.payload.command, docs/configuration.md#payload); remove "
        "StartupCommand"
    ),
    "StatusUpdate": (
        "a key of TARDIS's stock Slurm adapter (minutes a squeue result is "
        "cached): here it is the site key status_max_age, in seconds "
        "(default: half the drone heartbeat interval); remove StatusUpdate"
    ),
    "StatusOptions": (
        "a key of TARDIS's stock Slurm adapter (options of its squeue): here "
        "one squeue per site and cycle lists every drone with options of its "
        "own (docs/adapter.md); remove StatusOptions"
    ),
    "bulk_size": (
        "a key of TARDIS's stock Slurm adapter (drones per squeue call): here "
        "one squeue per site and cycle lists every drone; remove bulk_size"
    ),
    "bulk_delay": (
        "a key of TARDIS's stock Slurm adapter (wait before a squeue call): "
        "here the site key status_max_age says how long one listing is "
        "reused; remove bulk_delay"
    ),
}


def closest(word: object, choices: Iterable[str]) -> Optional[str]:
    """The choice ``word`` most likely meant, or None when none is close.

    A choice equal but for case wins (``Netslurm`` -> ``NetSlurm``); else the
    closest spelling by :func:`difflib.get_close_matches`, compared without
    case so ``partition`` still finds ``Partition``.
    """
    if not isinstance(word, str) or not word:
        return None
    choices = [c for c in choices if c != word]
    for choice in choices:
        if choice.lower() == word.lower():
            return choice
    by_lower = {choice.lower(): choice for choice in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'X'?)"`` for the closest choice, or ``""``."""
    match = closest(word, choices)
    return f" (did you mean {match!r}?)" if match else ""


def unknown_key(key: object, allowed: Iterable[str]) -> str:
    """The message for an unknown key: the stock key's replacement, or the
    closest allowed key and the full list (without the path)."""
    if isinstance(key, str) and key in STOCK_SLURM_KEYS:
        return f"unknown key: {STOCK_SLURM_KEYS[key]}"
    allowed = list(allowed)
    return f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
