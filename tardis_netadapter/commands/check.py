"""``tardis-netadapter check CONFIG... [--probe]``: is this site ready for drones?

Offline it validates every site of a registered driver (NetSlurm, ...) of
each configuration file, names a site whose adapter is misspelt, renders each
machine type's drone script and checks it with ``bash -n``, and reads the
generated HTCondor knobs back through HTCondor's own parser. With ``--probe``
it also logs in to the site once, through the site's own executor, and checks
what the login node can show. Every failed item comes with its fix.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import modes
from ..batch import DRIVERS
from ..paths import shell_path
from ..siteconfig import SiteSettings
from ..suggest import closest, did_you_mean
from .sitecli import build_executor

#: the marker that starts every line of the remote probe's answer
MARK = "TNA-CHECK"
#: how long ``--probe`` waits for its job on a worker (s), queueing included
PROBE_JOB_TIMEOUT = 300.0


@dataclass(frozen=True)
class Item:
    """One line of the checklist."""

    ok: bool
    what: str
    fix: str = ""
    warning: bool = False

    def line(self) -> str:
        mark = "ok  " if self.ok else ("warn" if self.warning else "FAIL")
        text = f"[{mark}] {self.what}"
        return f"{text}\n       fix: {self.fix}" if self.fix and not self.ok else text


def add_parser(subparsers: Any) -> None:
    """Register ``check``."""
    parser = subparsers.add_parser(
        "check",
        help="validate a configuration (offline) and probe the site (--probe)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "config",
        type=Path,
        nargs="+",
        help="cobald.yml or TARDIS YAML; several files (configs/*.yml) get a "
        "verdict each",
    )
    parser.add_argument(
        "--site",
        help="check only this site (default: every site of a registered driver)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also log in to the login node and check what it can show (and, "
        "for a mode with worker checks, run them in a short job)",
    )
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=PROBE_JOB_TIMEOUT,
        metavar="SECONDS",
        help="how long --probe waits for its job on a worker, queueing "
        f"included (default {PROBE_JOB_TIMEOUT:g})",
    )
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------
# offline checks
# --------------------------------------------------------------------------


def offline_items(settings: SiteSettings) -> list[Item]:
    """Checks that need nothing but the configuration and this machine."""
    from .. import render
    from ..condor_knobs import HTCONDOR_EXTRA, mismatches

    profile, budget = settings.profile, settings.budget
    items = [Item(True, f"{settings.name}: configuration valid")]
    for leg, protection in budget.legs():
        items.append(Item(True, f"keepalive: {leg}: {protection}"))
    for what, fix in modes.get(profile.mode).warnings(profile):
        items.append(Item(False, what, fix, warning=True))
    if profile.firewall.idle_timeout and not budget.enabled:
        items.append(
            Item(
                False,
                f"keepalive.enabled is false with firewall.idle_timeout="
                f"{profile.firewall.idle_timeout}: idle pool connections will die",
                "remove keepalive.enabled: false",
                warning=True,
            )
        )
    for machine_type in settings.machine_types:
        script = render.render_drone_script(
            profile,
            budget,
            site_name=settings.name,
            machine_type=machine_type,
            job_id_variable=settings.driver.job_id_variable,
        )
        items.append(_bash_syntax(machine_type, script))
    try:
        wrong = mismatches(budget.condor_knobs) if budget.condor_knobs else []
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        items.append(
            Item(
                False,
                f"HTCondor knobs could not be read back: {error}",
                HTCONDOR_EXTRA,
                warning=True,
            )
        )
    else:
        items.append(
            Item(
                not wrong,
                "HTCondor reads the generated knobs as intended"
                if not wrong
                else "HTCondor reads knobs differently: " + "; ".join(wrong),
                "fix keepalive.condor_knobs",
            )
        )
    return items


def _bash_syntax(machine_type: str, script: str) -> Item:
    bash = shutil.which("bash")
    if bash is None:
        return Item(True, f"{machine_type}: drone script rendered (bash not here)")
    result = subprocess.run(
        [bash, "-n"], input=script, capture_output=True, text=True, check=False
    )
    return Item(
        result.returncode == 0,
        f"{machine_type}: drone script renders and passes bash -n"
        if result.returncode == 0
        else f"{machine_type}: rendered script fails bash -n: {result.stderr.strip()}",
        "report this as a bug in tardis-netadapter with the rendered script",
    )


# --------------------------------------------------------------------------
# the remote probe: one executor call, every value quoted
# --------------------------------------------------------------------------


#: the probe's two functions: ``mark NAME ok|fail DETAIL`` and ``have COMMAND``
PREAMBLE = (
    f'mark() {{ printf \'{MARK} %s %s %s\\n\' "$1" "$2" "$3"; }}',
    'have() { if command -v "$1" >/dev/null 2>&1; then mark "cmd:$1" ok '
    '"$(command -v "$1")"; else mark "cmd:$1" fail missing; fi; }',
)


def probe_script(settings: SiteSettings) -> str:
    """A POSIX shell script whose every output line is ``MARK name ok|fail detail``."""
    profile = settings.profile
    lines = [
        *PREAMBLE,
        f"for c in {' '.join(shlex.quote(c) for c in settings.driver.site_commands)}; "
        'do have "$c"; done',
    ]
    mode = modes.get(profile.mode)
    lines += mode.probe_lines(profile)
    if profile.cvmfs.mode != "none":
        lines += [
            f"d={_home(profile.cvmfs.dist)}",
            'if [ -d "$d" ]; then mark cvmfs-dist ok "$d"; '
            'else mark cvmfs-dist fail "$d"; fi',
        ]
    lines += [
        f"h={_home(profile.monitoring.heartbeat_dir)}",
        'if mkdir -p -- "$h" 2>/dev/null && [ -w "$h" ]; then mark heartbeat-dir ok "$h"; '
        'else mark heartbeat-dir fail "$h"; fi',
    ]
    return "\n".join(lines) + "\n"


def probe_job_script(settings: SiteSettings) -> Optional[str]:
    """The script ``--probe`` runs in a short job on a worker: the network
    mode's worker checks (Mode.probe_job_lines, e.g. mode nat's route check
    as the drone user), with the same ``mark``/``have``; None when the mode
    has none."""
    lines = modes.get(settings.profile.mode).probe_job_lines(settings.profile)
    if not lines:
        return None
    return "\n".join([*PREAMBLE, *lines]) + "\n"


def _home(path: str) -> str:
    """Quote a worker path, keeping a leading ``~/`` meaningful to the shell;
    the word starts with ``/`` once read, so no command takes it for an option."""
    return shell_path(path)


_FIXES = {
    "cvmfs-dist": "build the cvmfsexec dist (makedist) at Network.cvmfs.dist on the shared "
    "file system",
    "heartbeat-dir": "make Network.monitoring.heartbeat_dir a writable directory on the "
    "shared file system",
}


def parse_probe(stdout: str) -> list[Item]:
    """Checklist items from the probe's output; lines without the marker are ignored."""
    items = []
    for line in stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[0] != MARK:
            continue
        name, state = parts[1], parts[2]
        detail = parts[3] if len(parts) > 3 else ""
        items.append(Item(state == "ok", f"{name}: {detail}".strip(), _fix(name)))
    return items


def _fix(name: str) -> str:
    """The common fix for a probe item, else the batch system's or a mode's."""
    if name in _FIXES:
        return _FIXES[name]
    if name.startswith("cmd:") and any(
        name[4:] in driver.site_commands for driver in DRIVERS.values()
    ):
        return (
            "the executor must log in where the batch system's client commands "
            "are on PATH"
        )
    for mode_name in modes.names():
        fix = modes.get(mode_name).probe_fix(name)
        if fix:
            return fix
    return ""


async def _probe(executor: Any, script: str, timeout: float) -> str:
    result = await asyncio.wait_for(
        executor.run_command("/bin/sh -s", stdin_input=script), timeout
    )
    return result.stdout


def probe_items(
    settings: SiteSettings,
    executor_spec: Any,
    job_timeout: float = PROBE_JOB_TIMEOUT,
) -> list[Item]:
    """Run the probe through the site's executor; a failure to log in is one
    item. Then the mode's worker checks, if it has any, in a short job: in
    the same event loop, as the executor's connection belongs to it."""
    try:
        executor = build_executor(executor_spec)
        return asyncio.run(_probe_site(settings, executor, job_timeout))
    except Exception as error:  # reaching a site fails in many ways: report, not crash
        return [
            Item(
                False,
                f"log in to the login node: {error!r}",
                "check the executor's host, username, client_keys and known_hosts",
            )
        ]


async def _probe_site(
    settings: SiteSettings, executor: Any, job_timeout: float
) -> list[Item]:
    stdout = await _probe(executor, probe_script(settings), settings.command_timeout)
    items = parse_probe(stdout)
    if not items:
        return [Item(False, "the probe printed nothing", "check that /bin/sh runs")]
    items = [Item(True, "logged in to the login node")] + items
    return items + await job_items(settings, executor, job_timeout)


async def job_items(
    settings: SiteSettings, executor: Any, timeout: float
) -> list[Item]:
    """The mode's worker checks, run through the batch system as the drone
    user on a worker of the first machine type (the driver's
    ``probe_job_command``); nothing when the mode has none."""
    from ..batch.runner import limited, run

    script = probe_job_script(settings)
    if script is None:
        return []
    driver = settings.driver
    name, machine_type = next(iter(settings.machine_types.items()))
    command = driver.probe_job_command(machine_type.batch)
    mode = settings.profile.mode
    if command is None:
        return [
            Item(
                False,
                f"worker checks of mode {mode}: the {driver.system} driver cannot "
                "run a probe job; not checked",
                "run the drone script's checks by hand on a worker (docs/modes.md)",
                warning=True,
            )
        ]
    try:
        result = await run(
            executor, limited(command, timeout), timeout=timeout, stdin_input=script
        )
    except Exception as error:  # a job that cannot run is an item, not a crash
        detail = getattr(error, "stderr", "") or getattr(error, "message", "")
        return [
            Item(
                False,
                f"probe job on machine type {name} ({command}): "
                f"{(detail or repr(error)).strip()[:300]}",
                "check the machine type's Partition and SubmitOptions (account, "
                "qos) and that the drone user may run a two-minute job; "
                "--job-timeout gives a busy queue longer",
            )
        ]
    items = parse_probe(getattr(result, "stdout", "") or "")
    if not items:
        return [
            Item(
                False,
                f"probe job on machine type {name} printed nothing ({command})",
                "check that the job runs /bin/sh with its stdin (srun forwards it)",
            )
        ]
    return [Item(True, f"probe job ran on a worker of machine type {name}")] + items


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------


def _sites(
    config: Path, requested: Optional[str]
) -> tuple[list[tuple[str, Optional[str]]], list[Item]]:
    """The sites of ``config`` to check, and items for sites whose adapter is wrong.

    Each site comes with the driver to check it as when its ``adapter`` is
    not one (None: its own). A site whose ``adapter`` is a registered
    driver's name but for case (``Netslurm``) is a failure, as TARDIS would
    look up a class that does not exist and the daemon would not start; its
    section is still checked as that driver's, so every error shows at once.
    A name of one of TARDIS's own site adapters (``Slurm``, ``HTCondor``,
    ...) is not this adapter's to check, and is said so.
    """
    from ..siteconfig import read_yaml, tardis_section

    tardis, _source = tardis_section(read_yaml(config), config)
    sites: list[tuple[str, Optional[str]]] = []
    items: list[Item] = []
    for site in tardis.get("Sites") or []:
        if not isinstance(site, Mapping):
            continue
        name, adapter = str(site.get("name")), site.get("adapter")
        if requested and name != requested:
            continue
        if adapter in DRIVERS:
            sites.append((name, None))
            continue
        items.append(adapter_item(name, adapter))
        meant = closest(adapter, DRIVERS)
        if meant is not None and meant.lower() == str(adapter).lower():
            sites.append((name, meant))
    if requested and not sites and not items:
        sites.append((requested, None))  # load_site_from_file names the known sites
    return sites, items


def adapter_item(site: str, adapter: Any) -> Item:
    """The checklist item for a site whose adapter is not a registered driver."""
    from importlib.util import find_spec

    registered = ", ".join(repr(name) for name in DRIVERS)
    if isinstance(adapter, str) and adapter.lower() in {d.lower() for d in DRIVERS}:
        return Item(
            False,
            f"Sites[{site}].adapter: got {adapter!r}{did_you_mean(adapter, DRIVERS)}; "
            "adapter names are case-sensitive",
            f"write adapter: {closest(adapter, DRIVERS)}",
        )
    stock = isinstance(adapter, str) and adapter.isidentifier()
    if stock and find_spec(f"tardis.adapters.sites.{adapter.lower()}") is not None:
        return Item(
            False,
            f"Sites[{site}]: adapter {adapter!r} is one of TARDIS's own site "
            f"adapters, not tardis-netadapter's ({registered}): not checked",
            "",
            warning=True,
        )
    return Item(
        False,
        f"Sites[{site}].adapter: got {adapter!r}{did_you_mean(adapter, DRIVERS)}; "
        f"expected a registered driver: one of {registered}",
        "set adapter to one of the names above (or a TARDIS site adapter's)",
    )


def report(items: Iterable[Item]) -> tuple[str, bool]:
    """The checklist text and whether every item passed (warnings pass)."""
    items = list(items)
    text = "\n".join(item.line() for item in items)
    return text, all(item.ok or item.warning for item in items)


def check_file(config: Path, args: argparse.Namespace) -> tuple[str, int]:
    """Check one configuration file; print its checklist, return its verdict
    line and exit code (0 ready, 1 an item failed, 2 invalid configuration)."""
    from ..schema import ConfigurationError
    from ..siteconfig import (
        load_site_from_file,
        load_site_settings,
        read_yaml,
        tardis_section,
    )

    items: list[Item] = []
    try:
        sites, items = _sites(config, args.site)
        if not sites and not items:
            items = [
                Item(
                    False,
                    f"no {'/'.join(DRIVERS)} site to check",
                    "add a site with one of these adapters to Sites",
                )
            ]
        for site, as_driver in sites:
            if as_driver is not None:  # its adapter line failed already
                tardis, _ = tardis_section(read_yaml(config), config)
                driver = DRIVERS[as_driver]()
                items += offline_items(
                    load_site_settings(site, tardis.get(site), driver)
                )
                continue
            found = load_site_from_file(config, site)
            items += offline_items(found.settings)
            if args.probe:
                items += probe_items(
                    found.settings, found.tardis[site].get("executor"), args.job_timeout
                )
    except ConfigurationError as error:
        if items:  # what was found before (a misspelt adapter) stays said
            print(report(items)[0])
        sys.stdout.flush()  # the errors after this file's header, also in a pipe
        print(f"tardis-netadapter: {config}: {error}", file=sys.stderr)
        return f"{config}: not ready: invalid configuration (errors above)", 2
    text, passed = report(items)
    print(text)
    if passed:
        return f"{config}: ready", 0
    return f"{config}: not ready: fix the items marked FAIL", 1


def run(args: argparse.Namespace) -> int:
    """The ``check`` command: every file gets its verdict; exit 0 when all are
    ready, else 1 (an item failed) or 2 (a configuration is invalid)."""
    several = len(args.config) > 1
    codes = []
    for config in args.config:
        if several:
            print(f"== {config}")
        verdict, code = check_file(config, args)
        print(verdict)
        codes.append(code)
    if several:
        bad = sum(1 for code in codes if code)
        print(
            f"{len(codes)} files: all ready"
            if not bad
            else f"{len(codes)} files: {bad} not ready"
        )
    return max(codes)
