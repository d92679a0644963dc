"""``tardis-netadapter examples [--dir]``: where the shipped example configurations are.

The wheel installs the repository's configs/*.yml as package data,
``tardis_netadapter/configs/`` in site-packages, so an operator who installed
the product without a checkout can start from one, e.g.
``tardis-netadapter check "$(tardis-netadapter examples --dir)/fzj-jureca.yml"``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

#: the package the configs are installed as (setup.py maps configs/ to it)
CONFIG_PACKAGE = "tardis_netadapter.configs"


def examples_dir() -> Path:
    """configs/ of an installed package, else of the repository checkout.

    An editable install cannot import the data package (it has no
    ``__init__.py`` and lives outside the package), hence the checkout.
    """
    try:
        spec = importlib.util.find_spec(CONFIG_PACKAGE)
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if any(Path(location).glob("*.yml")):
            return Path(location)
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if any(checkout.glob("*.yml")):
        return checkout
    raise FileNotFoundError(
        f"example configurations not found (package {CONFIG_PACKAGE} or {checkout})"
    )


def add_parser(subparsers: Any) -> None:
    """Register ``examples``."""
    parser = subparsers.add_parser(
        "examples",
        help="list the shipped example configurations (paths for check/render)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--dir", action="store_true", help="print only the directory holding them"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the directory, or one path per example configuration."""
    directory = examples_dir()
    if args.dir:
        print(directory)
        return 0
    for path in sorted(directory.glob("*.yml")):
        print(path)
    return 0
