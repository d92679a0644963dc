"""HTCondor configuration knobs for the payload, checked by HTCondor's own parser.

The payload is unmodified: it learns its keepalive intervals and its drone
identity only through HTCondor configuration. Rendering them as a config file
and reading them back with the bindings' ``param`` catches a knob HTCondor
would parse differently (a typo, a macro that does not expand) before a drone
runs with HTCondor's defaults and silently idles out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping

#: how an operator gets the bindings: the product's ``htcondor`` extra. The
#: product is not on PyPI, so "pip install 'tardis-netadapter[htcondor]'"
#: would fail (or fetch someone else's package): name the checkout's form and
#: the requirement itself (pyproject.toml's extra; a unit test keeps them equal)
HTCONDOR_EXTRA = (
    "install the htcondor extra: pip install '.[htcondor]' in the "
    "tardis-netadapter checkout, or pip install 'htcondor>=24'"
)


def have_htcondor() -> bool:
    """Whether the htcondor2 bindings are importable (without importing them: slow)."""
    return importlib.util.find_spec("htcondor2") is not None


_READ_BACK = """
import json, sys
import htcondor2
names = json.loads(sys.stdin.read())
print(json.dumps({name: htcondor2.param.get(name) for name in names}))
"""


def config_text(knobs: Mapping[str, str]) -> str:
    """The knobs as an HTCondor config file (one ``NAME = value`` line each)."""
    return "".join(f"{name} = {value}\n" for name, value in sorted(knobs.items()))


def read_back(knobs: Mapping[str, str], timeout: float = 60.0) -> dict[str, str]:
    """Parse the knobs with HTCondor's configuration parser and return what it sees.

    Runs in a child process: the bindings' configuration is process-global and
    must not leak into the adapter's own HTCondor queries. Raises
    RuntimeError naming the ``htcondor`` extra when the bindings are missing.
    """
    if not have_htcondor():
        raise RuntimeError(
            "the HTCondor Python bindings (htcondor2) are not installed: "
            + HTCONDOR_EXTRA
        )
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as handle:
        handle.write(config_text(knobs))
        path = handle.name
    try:
        environment = dict(os.environ, CONDOR_CONFIG=path)
        environment.pop("_CONDOR_LOCAL_CONFIG_DIR", None)
        result = subprocess.run(
            [sys.executable, "-c", _READ_BACK],
            input=json.dumps(sorted(knobs)),
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout,
            check=False,
        )
    finally:
        os.unlink(path)
    if result.returncode != 0:
        raise RuntimeError(
            "HTCondor's configuration parser could not read the generated knobs: "
            + result.stderr.strip()
        )
    return json.loads(result.stdout)


def mismatches(knobs: Mapping[str, str]) -> list[str]:
    """Knobs whose value HTCondor reads differently from what we generated."""
    seen = read_back(knobs)
    return [
        f"{name}: generated {value!r}, HTCondor reads {seen.get(name)!r}"
        for name, value in sorted(knobs.items())
        if str(seen.get(name)) != str(value)
    ]
