"""Helpers for unit tests that load a ``Network`` profile and render its script.

Every mode's configuration tests need the same three things: the problems a
bad profile is refused with, the script a good one renders, and a look at
one setting or carried file of that script.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tardis_netadapter import render
from tardis_netadapter.config import ConfigurationError, load_profile_and_budget


def problems_of(data: Any, path: str = "Site.Network") -> list[str]:
    """The problems ``data`` is refused with (fails the test if it loads)."""
    with pytest.raises(ConfigurationError) as caught:
        load_profile_and_budget(json.loads(json.dumps(data)), path)
    return caught.value.problems


def script_for(data: Any, job_id_variable: str = "SLURM_JOB_ID") -> str:
    """The drone script of a profile (site ``Site``, machine type ``cpu``)."""
    profile, budget = load_profile_and_budget(json.loads(json.dumps(data)))
    return render.render_drone_script(
        profile,
        budget,
        site_name="Site",
        machine_type="cpu",
        job_id_variable=job_id_variable,
    )


def setting(script: str, name: str) -> str:
    """The rendered right-hand side of ``NAME=...`` in the settings block."""
    match = re.search(rf"^{name}=(.*)$", script, re.MULTILINE)
    assert match, f"{name} not in the settings"
    return match.group(1)


def config_text(script: str, function: str) -> str:
    """The text a configuration function of the script prints."""
    match = re.search(
        rf"^{function}\(\) \{{\n    cat <<'TARDIS_NETADAPTER_EOF'\n(.*?)"
        r"^TARDIS_NETADAPTER_EOF$",
        script,
        re.MULTILINE | re.DOTALL,
    )
    assert match, f"{function} not in the script"
    return match.group(1)
