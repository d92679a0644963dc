"""Claims of README.md and docs/ that a test can hold against the code.

Each was found false by an operator following the docs (issue 17): an
install command for a package that is not on PyPI, two bash versions, an
example table missing most examples, a keepalive rule without its cap.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tardis_netadapter import keepalive
from tardis_netadapter.condor_knobs import HTCONDOR_EXTRA

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [
    *DOCS,
    *sorted((ROOT / "drone_scripts").rglob("*.sh")),
    *sorted((ROOT / "drone_scripts").rglob("*.j2")),
    *sorted((ROOT / "tardis_netadapter").rglob("*.py")),
]

#: bash features the drone scripts use, with the bash release that brought each
#: (bash's NEWS): the scripts need the newest of those they use
BASH_FEATURES = {
    r"\bmapfile -d\b": (4, 4),
    r"\breadarray -d\b": (4, 4),
    r"\$\{[A-Za-z_]\w*@[QEPAa]\}": (4, 4),
    r"\blocal -n\b|\bdeclare -n\b": (4, 3),
    r"\bwait -n\b": (4, 3),
    r"\bwait -p\b": (5, 1),
}
_BASH_CLAIM = re.compile(r"bash\s*(?:≥|>=)\s*(\d+)\.(\d+)")


def needed_bash() -> tuple[int, int]:
    scripts = [
        path.read_text()
        for path in (ROOT / "drone_scripts").rglob("*")
        if path.suffix in (".sh", ".j2")
    ]
    used = [
        version
        for pattern, version in BASH_FEATURES.items()
        if any(re.search(pattern, text) for text in scripts)
    ]
    return max(used)


def test_every_bash_version_named_is_the_one_the_scripts_need() -> None:
    needed = needed_bash()
    assert needed >= (4, 4)  # mapfile -d (payload.sh, supervise.sh)
    claims = {
        f"{path.relative_to(ROOT)}: bash >= {major}.{minor}": (int(major), int(minor))
        for path in SOURCES
        for major, minor in _BASH_CLAIM.findall(path.read_text())
    }
    assert len(claims) >= 4, claims  # deployment, drone-script, the script header, ...
    wrong = [claim for claim, version in claims.items() if version != needed]
    assert not wrong, (needed, wrong)


def test_no_page_installs_the_product_from_pypi() -> None:
    """tardis-netadapter is installed from a checkout; PyPI has no such package."""
    pattern = re.compile(r"pip3? install +['\"]?tardis-netadapter\b")
    found = [
        f"{path.relative_to(ROOT)}: {match.group()}"
        for path in SOURCES
        for match in pattern.finditer(path.read_text())
        if path.name != "condor_knobs.py"  # the comment saying why not
    ]
    assert not found, found


def test_the_htcondor_hint_names_the_extra_as_pyproject_defines_it() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    (requirement,) = re.findall(r'^htcondor = \["([^"]+)"\]$', pyproject, re.M)
    assert f"pip install '{requirement}'" in HTCONDOR_EXTRA
    assert "pip install '.[htcondor]'" in HTCONDOR_EXTRA
    assert "pip install 'tardis-netadapter" not in HTCONDOR_EXTRA


def test_deployment_lists_every_example_config() -> None:
    page = (ROOT / "docs" / "deployment.md").read_text()
    missing = [
        path.name
        for path in sorted((ROOT / "configs").glob("*.yml"))
        if f"| `configs/{path.name}` |" not in page
    ]
    assert not missing, missing


def test_server_alive_interval_is_documented_with_its_cap() -> None:
    row = next(
        line
        for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
        if line.startswith("| `server_alive_interval` |")
    )
    cap = keepalive.DEFAULT_SERVER_ALIVE_INTERVAL
    assert "a third of `firewall.idle_timeout`" in row
    assert f"capped at {cap} s" in row and f"{cap} s without one" in row
    # what the row says is what keepalive.py derives
    assert keepalive._derived_server_alive(300) == cap  # a third would be 100
    assert keepalive._derived_server_alive(60) == 20
    assert keepalive._derived_server_alive(None) == cap


def test_adapter_md_slurm_state_table_is_the_drivers() -> None:
    """Each documented Slurm state maps as the table says; none is left out."""
    from tardis_netadapter.batch import slurm

    page = (ROOT / "docs" / "adapter.md").read_text()
    status = page.split("\n## Status\n", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, tuple[str, bool]] = {}
    for states, outcome in re.findall(
        r"^\| ([A-Z_, ]+) \| (\w+[^|]*?) \|", status, re.MULTILINE
    ):
        for state in states.split(", "):
            documented[state] = (outcome.split(",")[0], "warning" in outcome)
    assert set(documented) == set(slurm.STATE_MAP), set(documented) ^ set(
        slurm.STATE_MAP
    )
    for state, (outcome, warned) in documented.items():
        assert slurm.map_state(state).name == outcome, state
        assert warned == (state in slurm.FAILURE_STATES), state
    (listed,) = re.findall(r"`(squeue --me [^`]*)`", status)
    assert shlex.split(listed) == shlex.split(slurm.squeue_command())


def test_configuration_md_error_example_is_what_the_validator_says() -> None:
    from tardis_netadapter.config import load_profile
    from tardis_netadapter.schema import ConfigurationError

    page = (ROOT / "docs" / "configuration.md").read_text()
    example = re.search(r"```\n(invalid configuration:\n(?:  - .*\n)+)```", page)
    assert example is not None
    network = {
        "firewall": {"idle_timeout": 20},
        "keepalive": {"server_alive_interval": 25},
        "tunnel": {"hops": [{"host": "login", "port": 70000}]},
    }
    try:
        load_profile(network, "NetLab.Network")
    except ConfigurationError as error:
        assert str(error) + "\n" == example.group(1)
    else:
        raise AssertionError("the example configuration was accepted")


def _rooms() -> str:
    page = (ROOT / "docs" / "architecture.md").read_text()
    return page.split("\n## Rooms\n", 1)[1].split("\n## ", 1)[0]


def test_architecture_rooms_name_every_module_and_package() -> None:
    """A module added without a word in the map of the code fails here."""
    rooms = _rooms()
    package = ROOT / "tardis_netadapter"
    named = [
        f"`{path.name}`" if path.is_file() else f"`{path.name}/"
        for path in sorted(package.iterdir())
        if (path.suffix == ".py" and path.name != "__init__.py")
        or (path.is_dir() and (path / "__init__.py").exists())
    ]
    named += [
        f"`batch/{path.name}`" for path in sorted((package / "batch").glob("*.py"))
    ]
    missing = [
        name for name in named if name not in rooms and name != "`batch/__init__.py`"
    ]
    assert not missing, missing


def test_architecture_names_every_product_command() -> None:
    """The product's own subcommands (cli.COMMAND_MODULES), not the lab's."""
    import argparse
    import importlib

    from tardis_netadapter.cli import COMMAND_MODULES

    row = next(
        line for line in _rooms().splitlines() if line.startswith("| `commands/`")
    )
    subparsers = argparse.ArgumentParser().add_subparsers()
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    product = set(subparsers.choices)
    assert {"check", "render", "status", "examples", "site-nat"} <= product
    assert not [name for name in product if f"`{name}`" not in row]


def test_no_page_or_example_runs_cobald_with_a_run_argument() -> None:
    """COBalD's command is ``cobald CONFIG``: ``cobald run CONFIG`` fails
    (``run`` is taken for the configuration file), yet README.md and the
    example configs said it."""
    pattern = re.compile(r"\bcobald run\b")
    pages = [*DOCS, *sorted((ROOT / "configs").glob("*.yml"))]
    pages += sorted((ROOT / "contrib").rglob("*.service"))
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in pages
        for line in path.read_text().splitlines()
        if pattern.search(line)
    ]
    assert not found, found
