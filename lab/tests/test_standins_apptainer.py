"""The apptainer/singularity stand-in: binds in a private mount namespace, env, exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

STANDINS = Path(__file__).resolve().parents[1] / "tardis_netadapter_lab" / "standins"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def site() -> Iterator[Path]:
    """bin/{apptainer,singularity}, an image dir and bind sources, world-readable."""
    top = Path(tempfile.mkdtemp(prefix="tna-apptainer-"))
    top.chmod(0o755)
    (top / "bin").mkdir(mode=0o755)
    for name in ("apptainer", "singularity"):
        shutil.copy(STANDINS / "apptainer.py", top / "bin" / name)
        (top / "bin" / name).chmod(0o755)
    image = top / "image"
    (image / ".singularity.d").mkdir(parents=True)
    (top / "src").mkdir()
    (top / "src" / "hello.txt").write_text("hello from the host\n")
    (top / "dst").mkdir()
    (top / "home").mkdir()
    (top / "home" / "secret").write_text("host home\n")
    for path in top.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    for name in ("apptainer", "singularity"):
        (top / "bin" / name).chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def apptainer(site: Path, *args: str, name: str = "apptainer", prefix=(), **env: str):
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APPTAINER", "SINGULARITY"))
    }
    full_env.update(env)
    return subprocess.run(
        [*prefix, str(site / "bin" / name), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
        cwd=site,
    )


@pytest.fixture
def namespaces(site: Path) -> None:
    probe = apptainer(site, "exec", str(site / "image"), "true")
    if probe.returncode != 0 and "namespace" in probe.stderr:
        pytest.skip(f"no mount namespaces here: {probe.stderr.strip()}")


def test_bind_is_visible_inside_and_private(site, namespaces):
    result = apptainer(
        site,
        "exec",
        "--bind",
        f"{site / 'src'}:{site / 'dst'}",
        str(site / "image"),
        "cat",
        str(site / "dst" / "hello.txt"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the host\n"
    assert list((site / "dst").iterdir()) == [], "the bind must not leak to the host"


def test_read_only_bind_and_exit_code(site, namespaces):
    script = f"touch {site / 'dst' / 'new'} 2>/dev/null && exit 0; exit 42"
    ro = apptainer(
        site,
        "exec",
        "-B",
        f"{site / 'src'}:{site / 'dst'}:ro",
        str(site / "image"),
        "sh",
        "-c",
        script,
    )
    assert ro.returncode == 42, ro.stderr
    rw = apptainer(
        site,
        "exec",
        f"--bind={site / 'src'}:{site / 'dst'}",
        str(site / "image"),
        "sh",
        "-c",
        script,
    )
    assert rw.returncode == 0, rw.stderr
    assert (site / "src" / "new").exists(), "a rw bind writes through to the source"


def test_environment(site, namespaces):
    (site / "envfile").write_text("# comment\nFROM_FILE=yes\nexport QUOTED='a b'\n")
    script = (
        'echo "$A|$B|$FROM_FILE|$QUOTED|$FROM_PREFIX|$HOSTVAR|$APPTAINER_CONTAINER"'
    )
    result = apptainer(
        site,
        "exec",
        "--env",
        "A=1,B=2",
        "--env-file",
        str(site / "envfile"),
        str(site / "image"),
        "sh",
        "-c",
        script,
        APPTAINERENV_FROM_PREFIX="p",
        HOSTVAR="h",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"1|2|yes|a b|p|h|{site / 'image'}"
    clean = apptainer(
        site,
        "exec",
        "--cleanenv",
        str(site / "image"),
        "sh",
        "-c",
        'echo "[$HOSTVAR]"',
        HOSTVAR="h",
    )
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.strip() == "[]"


def test_nv_and_singularity_name(site, namespaces):
    result = apptainer(
        site,
        "exec",
        "--nv",
        str(site / "image"),
        "sh",
        "-c",
        'echo "$APPTAINER_NV $SINGULARITY_CONTAINER $SINGULARITY_NAME"',
        name="singularity",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"1 {site / 'image'} image"
    assert "NVIDIA" in result.stderr


def test_contain_hides_host_home(site, namespaces):
    listing = f'ls -A "$HOME"; cat {site / "dst" / "hello.txt"}'
    result = apptainer(
        site,
        "exec",
        "--contain",
        "-B",
        f"{site / 'src'}:{site / 'dst'}",
        str(site / "image"),
        "sh",
        "-c",
        listing,
        HOME=str(site / "home"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the host\n", "empty $HOME, bind still there"
    plain = apptainer(
        site,
        "exec",
        str(site / "image"),
        "sh",
        "-c",
        'ls -A "$HOME"',
        HOME=str(site / "home"),
    )
    assert plain.stdout.split() == ["secret"]


def test_run_uses_the_runscript(site, namespaces):
    runscript = site / "image" / ".singularity.d" / "runscript"
    runscript.write_text('#!/bin/sh\necho "runscript got: $*"\nexit 3\n')
    result = apptainer(site, "run", str(site / "image"), "a", "b")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "runscript got: a b\n"
    runscript.unlink()
    missing = apptainer(site, "run", str(site / "image"))
    assert missing.returncode == 255
    assert "runscript" in missing.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["exec", "/no/such/image", "true"], "could not open image /no/such/image"),
        (["exec", "docker://alpine", "true"], "cannot pull docker://alpine"),
        (["exec", "--bogus", "IMAGE", "true"], "unknown flag: --bogus"),
        (["exec", "IMAGE", "no-such-command-xyz"], "executable file not found"),
        (
            ["exec", "-B", "/no/such/src:/mnt", "IMAGE", "true"],
            "mount hook function failure",
        ),
        (
            ["exec", "-B", "SRC:/etc/hostname/sub", "IMAGE", "true"],
            "mount hook function failure",
        ),
        (["frobnicate"], "unknown command"),
    ],
)
def test_failures_exit_255(site, namespaces, args, message):
    args = [
        a.replace("IMAGE", str(site / "image")).replace("SRC", str(site / "src"))
        for a in args
    ]
    result = apptainer(site, *args)
    assert result.returncode == 255
    assert message in result.stderr
    assert result.stderr.startswith("FATAL:")


def test_unprivileged_user_gets_the_binds(site):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to switch to an unprivileged user")
    probe = subprocess.run(
        [*AS_NOBODY, "unshare", "--user", "--map-current-user", "--mount", "true"],
        capture_output=True,
        timeout=10,
    )
    if probe.returncode != 0:
        pytest.skip("unprivileged user namespaces unavailable")
    result = apptainer(
        site,
        "exec",
        "-B",
        f"{site / 'src'}:{site / 'dst'}:ro",
        str(site / "image"),
        "sh",
        "-c",
        f"id -u; cat {site / 'dst' / 'hello.txt'}",
        prefix=AS_NOBODY,
        HOME="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["65534", "hello from the host"]
    denied = apptainer(
        site,
        "exec",
        "-B",
        f"{site / 'src'}:/standin-test-cannot-create",
        str(site / "image"),
        "true",
        prefix=AS_NOBODY,
        HOME="/",
    )
    assert denied.returncode == 255
    assert "mount hook function failure" in denied.stderr
    assert not os.path.exists("/standin-test-cannot-create")


def test_net_options_are_parsed_and_stripped_for_the_container() -> None:
    from tardis_netadapter_lab.standins import apptainer

    argv = [
        "--net",
        "--network",
        "epn-public",
        "--network-args",
        "IP=10.66.9.20",
        "-B",
        "/tmp",
        "--rocm",
        "--network-args=portmap=x",
        "/image",
        "true",
    ]
    opts, rest = apptainer.parse_options(argv)
    assert opts["net"] and opts["rocm"]
    assert opts["network"] == "epn-public"
    assert opts["network-args"] == ["IP=10.66.9.20", "portmap=x"]
    assert rest == ["/image", "true"]
    assert apptainer.strip_net_options(argv) == [
        "-B",
        "/tmp",
        "--rocm",
        "/image",
        "true",
    ]


def test_net_without_a_setuid_installation_is_apptainers_fatal(capsys) -> None:
    from tardis_netadapter_lab.standins import apptainer

    # the plain stand-in (the lab's PATH, this checkout) has no starter-suid
    assert apptainer.main(["exec", "--net", "/", "true"]) == 255
    err = capsys.readouterr().err
    assert err.startswith("FATAL:")
    if os.geteuid() == 0:
        assert "no starter-suid" in err
    else:
        assert "network requires root or a suid installation" in err


def test_buildcfg_names_the_installation_and_its_setuid_state(capsys) -> None:
    from tardis_netadapter_lab.standins import apptainer

    assert apptainer.main(["buildcfg"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    prefix = lines["PREFIX"]
    assert lines["APPTAINER_CONFDIR"] == f"{prefix}/etc/apptainer"
    assert lines["CNI_CONFIGURATION_DIR"] == f"{prefix}/etc/apptainer/network"
    assert lines["APPTAINER_SUID_INSTALL"] == "0"  # this checkout: no starter-suid
    assert apptainer.main(["buildcfg", "SYSCONFDIR"]) == 0
    assert capsys.readouterr().out.strip() == f"{prefix}/etc"
    assert apptainer.main(["buildcfg", "NOPE"]) == 255
