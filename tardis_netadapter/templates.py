"""The drone-script templates: where they are and the filters that keep them safe.

Shared by the renderer (render.py) and the network modes (modes/), which render
their own configuration files. Every configured value reaches bash through
``shquote`` (single quotes) and ssh_config through ``sshvalue``; the bash
libraries are plain files inserted verbatim, never parsed as templates.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2

__all__ = [
    "CONTROL",
    "comment",
    "render_template",
    "shbool",
    "shquote",
    "shwords",
    "sshvalue",
    "template_dir",
]

TEMPLATE_PACKAGE = "tardis_netadapter.drone_scripts"
#: characters no configured value may carry into a file the script writes
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def template_dir() -> Path:
    """drone_scripts/ of an installed package, else of the repository checkout."""
    try:
        spec = importlib.util.find_spec(TEMPLATE_PACKAGE)
    except ModuleNotFoundError:
        spec = None
    # a namespace package (no __init__.py): its directories, not a resource path
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "drone.sh.j2").is_file():
            return Path(location)
    checkout = Path(__file__).resolve().parent.parent / "drone_scripts"
    if (checkout / "drone.sh.j2").is_file():
        return checkout
    raise FileNotFoundError(
        f"drone script templates not found (package {TEMPLATE_PACKAGE} or {checkout})"
    )


def shquote(value: Any) -> str:
    """One bash word whose value is exactly ``value`` (single-quoted if needed)."""
    if isinstance(value, bool):
        raise TypeError("use the shbool filter for booleans")
    return shlex.quote(str(value))


def shwords(values: Iterable[Any]) -> str:
    """Bash words for an array literal ``(a 'b c')``."""
    return " ".join(shquote(value) for value in values)


def shbool(value: bool) -> str:
    """1 or 0, for bash's ``(( ))``."""
    return "1" if value else "0"


def comment(value: Any) -> str:
    """Text that stays inside one ``#`` comment line."""
    return CONTROL.sub("?", str(value))


def sshvalue(value: str) -> str:
    """A literal ssh_config argument: %-tokens escaped, quoted when needed.

    A leading ``~`` is still expanded by ssh (as in any ssh_config).
    """
    if CONTROL.search(value):
        raise ValueError(f"control character in ssh_config value {value!r}")
    value = value.replace("%", "%%")
    if value and not re.search(r"[\s\"'\\#=]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4)
def _environment(directory: Path) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # bash's ${#array[@]} would open a Jinja comment
        comment_start_string="{##",
        comment_end_string="##}",
    )
    environment.filters.update(
        shquote=shquote,
        shwords=shwords,
        shbool=shbool,
        comment=comment,
        sshvalue=sshvalue,
    )
    return environment


def render_template(name: str, **context: Any) -> str:
    """Render drone_scripts/``name`` (a path relative to drone_scripts/)."""
    return _environment(template_dir()).get_template(name).render(**context)
