"""Install the stand-ins as commands in the lab's bin dir.

The repository may live in a directory the drone users cannot read (/root is
mode 700), so the stand-ins are copied, not linked, and run with the system
python (stdlib only) through their `#!/usr/bin/python3` line.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

STANDINS_DIR = Path(__file__).parent / "standins"
SHEBANG = "#!/usr/bin/python3\n"

# module -> command names it is installed as (the real programs' names)
COMMANDS: dict[str, tuple[str, ...]] = {
    "pool": ("pool",),
    "payload": ("condor_master", "payload"),
    "condor_status": ("condor_status",),
    "condor_drain": ("condor_drain",),
    "cvmfsexec": ("cvmfsexec", "mountrepo", "umountrepo"),
    "apptainer": ("apptainer", "singularity"),
}


def install(bin_dir: Path) -> list[str]:
    """Copy every stand-in module (for imports) and its commands; list commands."""
    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(bin_dir, 0o755)
    installed = []
    missing = sorted(set(COMMANDS) - {path.stem for path in STANDINS_DIR.glob("*.py")})
    if missing:
        # a broken install, not a lab to half-start: the tests would fail later
        # with far less obvious messages
        raise FileNotFoundError(
            f"stand-ins missing from {STANDINS_DIR}: {', '.join(missing)}; "
            "reinstall the package (pip install -e .)"
        )
    for module in sorted(STANDINS_DIR.glob("*.py")):
        shutil.copyfile(module, bin_dir / module.name)
        os.chmod(bin_dir / module.name, 0o644)
        for command in COMMANDS.get(module.stem, ()):
            _install_command(module, bin_dir / command)
            installed.append(command)
    return installed


def _install_command(module: Path, target: Path) -> None:
    text = module.read_text()
    if text.startswith("#!"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
    target.write_text(SHEBANG + text)
    os.chmod(target, 0o755)


def install_site_software(home: Path, bin_dir: Path, user: str) -> Path:
    """What a site operator sets up once in the drone user's shared home.

    cvmfsexec's ``makedist`` leaves ``~/cvmfsexec/{cvmfsexec,mountrepo,
    umountrepo,dist/}``; the profile default ``cvmfs.dist: ~/cvmfsexec/dist``
    expects exactly that. ``~/image`` is a directory image for the apptainer
    stand-in. Returns the cvmfsexec directory.
    """
    tools = home / "cvmfsexec"
    (tools / "dist").mkdir(parents=True, exist_ok=True)
    for command in COMMANDS["cvmfsexec"]:
        link = tools / command
        if not link.is_symlink():
            link.symlink_to(bin_dir / command)
    image = home / "image"
    image.mkdir(exist_ok=True)
    for path in (tools, tools / "dist", image):
        shutil.chown(path, user, user)
    return tools
