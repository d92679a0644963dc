"""container.apptainer and container.gpu (issue 15): the profile keys, their
validation, and what lib/container.sh makes of them (run for real in bash)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.profiles import problems_of, script_for, setting

BASE: dict[str, Any] = {
    "mode": "direct",
    "cvmfs": {"mode": "none"},
    "pool": {"collector": "10.66.2.1:9618"},
}


def with_container(**container: Any) -> dict[str, Any]:
    return {
        **BASE,
        "container": {"runtime": "apptainer", "image": "/img.sif", **container},
    }


@pytest.mark.parametrize(
    ("gpu", "rendered"),
    [
        (True, "nvidia"),
        (False, "none"),
        ("nvidia", "nvidia"),
        ("amd", "amd"),
        ("none", "none"),
    ],
)
def test_gpu_values_render_the_vendor(gpu: Any, rendered: str) -> None:
    script = script_for(with_container(gpu=gpu))
    assert setting(script, "CONTAINER_GPU").strip("'") == rendered


def test_gpu_unknown_vendor_is_refused_naming_the_key() -> None:
    problems = problems_of(with_container(gpu="intel"))
    assert any(
        "container.gpu" in p and "'intel'" in p and "'amd'" in p for p in problems
    ), problems


def test_gpu_without_a_container_is_refused() -> None:
    data = {**BASE, "container": {"runtime": "none", "gpu": "amd"}}
    problems = problems_of(data)
    assert any("container.gpu" in p and "runtime" in p for p in problems), problems


def test_apptainer_must_be_absolute() -> None:
    problems = problems_of(with_container(apptainer="bin/apptainer"))
    assert any(
        "container.apptainer" in p and "'bin/apptainer'" in p and "absolute" in p
        for p in problems
    ), problems


def test_apptainer_needs_a_runtime() -> None:
    data = {**BASE, "container": {"runtime": "none", "apptainer": "/opt/a/apptainer"}}
    problems = problems_of(data)
    assert any("container.apptainer" in p and "'none'" in p for p in problems)


def test_apptainer_is_rendered() -> None:
    script = script_for(with_container(apptainer="/opt/apptainer/bin/apptainer"))
    assert (
        setting(script, "CONTAINER_APPTAINER").strip("'")
        == "/opt/apptainer/bin/apptainer"
    )


# -- lib/container.sh, run -----------------------------------------------------


def container_argv(script: str, tmp_path: Path, body: str = "") -> list[str]:
    """CONTAINER_ARGV after container_stage (the script sourced, main not run)."""
    path = tmp_path / "drone.sh"
    path.write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apptainer").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "apptainer").chmod(0o755)
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'source "$1"\nDRONE_DIR=/w CVMFS_ACTIVE_MODE=none '
            f"DRONE_START_US=$(now_us); {body} container_stage 2>/dev/null;"
            " printf '%s\\0' \"${CONTAINER_ARGV[@]}\"",
            "test",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\0")[:-1]


def test_amd_renders_rocm_and_the_hook_goes_before_the_image(tmp_path: Path) -> None:
    image = tmp_path / "img.sif"
    image.write_text("")
    script = script_for(with_container(gpu="amd", image=str(image)))
    argv = container_argv(
        script, tmp_path, "CONTAINER_EXTRA_OPTIONS+=(--net --network 'a b');"
    )
    assert argv[:3] == ["apptainer", "exec", "--rocm"]
    assert "--nv" not in argv
    assert argv[-1] == str(image)
    hook = argv.index("--net")
    assert argv[hook : hook + 3] == ["--net", "--network", "a b"]
    assert hook < argv.index("--env-file")


def test_site_local_apptainer_is_run_by_its_path(tmp_path: Path) -> None:
    image = tmp_path / "img.sif"
    image.write_text("")
    local = tmp_path / "opt" / "apptainer"
    local.parent.mkdir()
    local.write_text("#!/bin/sh\nexit 0\n")
    local.chmod(0o755)
    script = script_for(with_container(apptainer=str(local), image=str(image)))
    argv = container_argv(script, tmp_path)
    assert argv[:2] == [str(local), "exec"]
    assert "--rocm" not in argv and "--nv" not in argv


def test_missing_site_local_apptainer_fails_stage_container(tmp_path: Path) -> None:
    image = tmp_path / "img.sif"
    image.write_text("")
    script = script_for(
        with_container(apptainer="/nonexistent/apptainer", image=str(image))
    )
    path = tmp_path / "drone.sh"
    path.write_text(script)
    result = subprocess.run(
        [
            "bash",
            "-c",
            'source "$1"\nDRONE_DIR=/w CVMFS_ACTIVE_MODE=none '
            "DRONE_START_US=$(now_us); container_stage",
            "test",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    code = 40  # EXIT_CONTAINER (lib/common.sh)
    assert result.returncode == code, result.stderr
    assert "stage container failed" in result.stderr
    assert "/nonexistent/apptainer" in result.stderr
