"""Configured paths that reach shell commands (find, rm, mkdir, cvmfsexec ...).

A path from the configuration ends up as an operand of commands on the login
node (the heartbeat collection's ``find``, the cleanup's ``rm``, the check
probe's ``mkdir``) and on the workers. ``heartbeat_dir: -delete`` once turned
the status poll's ``find`` into a deletion in the login node's home, and
``heartbeat_dir: "~"`` made the 7-day prune consider every old ``*.json`` in
the home. So such a path is accepted only in one plain form, and is turned
into a shell word that no command can read as an option.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Optional

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a configured path for shell commands; None if it can.

    Allowed: an absolute path (``/p/scratch/x``) or one under the home
    (``~/x``), normalised (no ``.`` or ``..`` parts, no ``//``, no trailing
    ``/``), without control characters, and never the home itself or ``/``.
    """
    if not value or _CONTROL.search(value):
        return "expected a path without control characters (newline, tab, ...)"
    if value in ("/", "~", "~/") or value.rstrip("/") in ("$HOME", "${HOME}"):
        return (
            "the home or the root itself is never a path here: commands such as "
            "the prune would act on files that are not the adapter's; use a "
            "directory of its own, e.g. ~/.tardis-netadapter/heartbeats"
        )
    if not (value.startswith("/") or value.startswith("~/")):
        return (
            "expected an absolute path (/...) or one under the home (~/...); a "
            "relative path depends on the current directory and one starting "
            "with '-' is read as an option"
        )
    rest = value[2:] if value.startswith("~/") else value[1:]
    parts = rest.split("/")
    if any(part in ("", ".", "..") for part in parts):
        normal = posixpath.normpath(value)
        hint = f": write {normal!r}" if path_problem(normal) is None else ""
        return (
            "expected a normalised path (no '.' or '..' parts, no '//', no "
            f"trailing '/'){hint}"
        )
    return None


def shell_path(path: str) -> str:
    """``path`` as one shell word that starts with ``/`` once the shell has read it.

    ``~/x`` becomes ``"$HOME"/'x'`` (the home of the account the command runs
    as). Because the word never starts with ``-``, ``find`` (which has no
    ``--``) and every other command take it as an operand. Raises ValueError
    for a path :func:`path_problem` refuses: configuration validation keeps
    those out, so reaching here with one is a bug.
    """
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(f"refusing path {path!r} for a shell command: {problem}")
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)
