"""The product distribution: what its wheel holds and what it may import.

The lab (lab/, distribution tardis-netadapter-lab) is a simulation for tests
and the demo; the product wheel must hold the adapter, the drone scripts, the
example configurations and the operator CLI, and no lab code. The product adds
the lab's commands only through the ``tardis_netadapter.commands`` entry-point
group, never by importing it.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tardis_netadapter import cli, condor_knobs

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ROOT / "tardis_netadapter"
LAB_PACKAGES = ("tardis_netadapter_lab", "tardis_netadapter.lab")


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute module names ``source`` (a module of ``package``) imports.

    Relative imports are resolved, and ``from a import b`` counts as both
    ``a`` and ``a.b`` (b may be a module).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def lab_imports(path: Path) -> list[str]:
    """The lab modules a product file imports (lab package or the old demo)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = imported_modules(path.read_text(encoding="utf-8"), package)
    return sorted(
        name
        for name in found
        if name.startswith(LAB_PACKAGES) or name == "tardis_netadapter.commands.demo"
    )


def test_the_import_scan_sees_every_spelling() -> None:
    """The scan below must be able to fail: lazy, relative and absolute imports."""
    source = (
        "def run():\n"
        "    from ..lab.daemon import write_config\n"
        "    from . import demo\n"
        "import tardis_netadapter_lab\n"
    )
    found = imported_modules(source, "tardis_netadapter.commands")
    assert "tardis_netadapter.lab.daemon" in found
    assert "tardis_netadapter.commands.demo" in found
    assert "tardis_netadapter_lab" in found


def test_no_product_module_imports_the_lab() -> None:
    offenders = {
        str(path.relative_to(ROOT)): lab_imports(path)
        for path in sorted(PRODUCT.rglob("*.py"))
        if lab_imports(path)
    }
    assert not offenders, f"product modules importing the lab: {offenders}"
    assert not (PRODUCT / "lab").exists(), "tardis_netadapter/lab/ is back"


#: what a copy of the checkout leaves out (the venv, git, earlier builds)
NOT_COPIED = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The product wheel, built from a copy of this checkout, offline.

    A copy, lab/ included: setuptools builds through ./build, whose leftovers
    would otherwise leak into the wheel and litter the checkout. No build
    isolation and no index: the venv's setuptools (>=77, scripts/bootstrap)
    builds it.
    """
    source = tmp_path_factory.mktemp("source") / "tardis-netadapter"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PIP_NO_INPUT="1"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("tardis_netadapter-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_holds_no_lab_code(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert any(name.startswith("tardis_netadapter/") for name in names)
    lab = [
        name
        for name in names
        if "tardis_netadapter_lab" in name
        or "standins" in name
        or name.startswith("tardis_netadapter/lab/")
        or name.endswith("/demo.py")
    ]
    assert not lab, f"lab code in the product wheel: {lab}"
    assert not any(name.startswith(("tests/", "lab/", "benchmarks/")) for name in names)


def test_wheel_holds_the_drone_scripts_and_configs(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for path in sorted((ROOT / "drone_scripts").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            relative = path.relative_to(ROOT / "drone_scripts").as_posix()
            assert f"tardis_netadapter/drone_scripts/{relative}" in names
    configs = sorted(path.name for path in (ROOT / "configs").glob("*.yml"))
    assert configs
    for name in configs:
        assert f"tardis_netadapter/configs/{name}" in names


def test_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    assert "Requires-Python: >=3.10" in text
    assert "License-Expression: MIT" in text
    assert "Provides-Extra: htcondor" in text
    assert "Requires-Dist: htcondor>=24; extra == " in text
    # htcondor only as an extra, never unconditional
    assert "Requires-Dist: htcondor>=24\n" not in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
    (entry_points,) = [
        n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")
    ]
    points = wheel.read(entry_points).decode()
    assert "tardis-netadapter = tardis_netadapter.cli:main" in points
    assert "NetadapterPoolFactory" in points
    assert "tardis_netadapter.commands" not in points  # the lab registers those


def test_cli_adds_commands_from_the_entry_point_group(monkeypatch) -> None:
    """Without entries the CLI lacks lab/demo; with one, it has it."""
    monkeypatch.setattr(cli, "plugin_commands", lambda: [])
    names = _subcommands(cli.build_parser())
    assert {"check", "render", "status", "examples"} <= names
    assert not names & {"lab", "demo"}

    def add_toy(subparsers) -> None:
        subparsers.add_parser("toy").set_defaults(func=lambda args: 7)

    monkeypatch.setattr(cli, "plugin_commands", lambda: [("toy", add_toy)])
    assert "toy" in _subcommands(cli.build_parser())
    assert cli.main(["toy"]) == 7


def test_installed_lab_registers_lab_and_demo() -> None:
    """In the dev environment (scripts/bootstrap) the lab distribution is there."""
    names = dict(cli.plugin_commands())
    assert {"lab", "demo"} <= set(names)


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_collector_without_bindings_names_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "have_htcondor", lambda: False)
    code = cli.main(["status", "any.yml", "--collector"])
    assert code == 2
    assert "pip install '.[htcondor]'" in capsys.readouterr().err


def test_knob_read_back_without_bindings_names_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(condor_knobs, "have_htcondor", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install '\.\[htcondor\]'"):
        condor_knobs.read_back({"STARTD_NOCLAIM_SHUTDOWN": "60"})


def test_examples_are_found() -> None:
    from tardis_netadapter.commands.examples import examples_dir

    assert (examples_dir() / "fzj-jureca.yml").is_file()
