"""Render the drone script: one bash file per machine type from the Network profile.

The script is assembled from parts: the common settings (cvmfs, container,
pool, payload, monitoring), then the network mode's parts (its settings, its
configuration files, its bash libraries and its stages; see
tardis_netadapter/modes/), with the stage list rendered once into ``main()``
and the watchdog's stage list (modes/stages.py).

Why templates: the script and the configuration files it writes (ssh_config,
proxychains.conf, ...) should read like the OpenSSH and proxychains configs
they are, so a site operator can review exactly what runs
(``tardis-netadapter render``). Why it is safe: every configured value reaches
bash through ``shquote`` (single quotes) and ssh_config through ``sshvalue``;
the bash libraries are plain files inserted verbatim, so no configured value
is ever parsed as code. Per-drone values are not rendered at all: they arrive
as environment variables exported by the batch system, or are chosen by the
script at run time (a mode's ``auto`` ports: the placeholder
``@TARDIS_PORT_<i>@``, replaced once chosen).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import modes
from .keepalive import KeepaliveBudget
from .modes import stages as stage_list
from .modes.base import NAME, ConfigFile, Mode, SettingsGroup
from .modes.socks import (
    chain_route,
    port_placeholder,
    proxychains_conf_text,
    ssh_config_text,
    tsocks_conf_text,
    tunnel_route,
)
from .profile import NetworkProfile
from .schema import ConfigurationError
from .templates import (
    comment,
    render_template,
    shbool,
    shquote,
    shwords,
    sshvalue,
    template_dir,
)

__all__ = [
    "chain_route",
    "comment",
    "cvmfs_http_proxy",
    "port_placeholder",
    "proxychains_conf_text",
    "render_drone_script",
    "shbool",
    "shquote",
    "shwords",
    "ssh_config_text",
    "sshvalue",
    "template_dir",
    "tsocks_conf_text",
    "tunnel_route",
]

#: terminator of the quoted here-documents that carry the configuration files
HEREDOC_END = "TARDIS_NETADAPTER_EOF"
#: bash libraries every script has: before the mode's, and after them
COMMON_LIBRARIES = ("common.sh", "cvmfs.sh")
PAYLOAD_LIBRARIES = ("container.sh", "payload.sh")
#: the connectivity watchdog and its glue, inserted when monitoring is enabled
MONITORING_LIBRARIES = ("watchdog.sh", "monitoring.sh")
#: how long mountrepo may take per repository (s)
CVMFS_MOUNT_TIMEOUT = 300
#: grace between SIGTERM and SIGKILL for the payload (ms); below a batch
#: system's usual kill wait (Slurm's KillWait: 30 s)
PAYLOAD_STOP_TIMEOUT_MS = 20_000
#: what a batch driver may name as its job-id variable
JOB_ID_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")


def cvmfs_http_proxy(profile: NetworkProfile) -> str:
    """CVMFS_HTTP_PROXY as rendered: the mode resolves what it adds (forward:NAME)."""
    return modes.get(profile.mode).cvmfs_http_proxy(profile)


def _check_values(profile: NetworkProfile, path: str = "Network") -> None:
    server_url = profile.cvmfs.server_url
    if server_url is not None and re.search(r"[\x00-\x1f\x7f\"$`\\]", server_url):
        raise ConfigurationError(
            [
                f"{path}.cvmfs.server_url: got {server_url!r}; a URL must not "
                'contain control characters, ", $, ` or \\ (it is written into '
                "cvmfs's configuration)"
            ]
        )


def _common_settings(
    profile: NetworkProfile,
    budget: KeepaliveBudget,
    mode: Mode,
    site_name: str,
    machine_type: str,
) -> list[SettingsGroup]:
    """The settings every script has, whatever its mode."""
    proxy = mode.cvmfs_http_proxy(profile)
    groups = [
        SettingsGroup(
            "drone",
            (
                ("SITE_NAME", site_name),
                ("MACHINE_TYPE", machine_type),
                ("NETWORK_MODE", profile.mode),
            ),
        ),
        SettingsGroup(
            "cvmfs",
            (
                ("CVMFS_MODE", profile.cvmfs.mode),
                ("CVMFS_DIST", profile.cvmfs.dist),
                ("CVMFS_REPOSITORIES", profile.cvmfs.repositories),
                ("CVMFS_HTTP_PROXY", proxy),
                ("CVMFS_PROXY_PER_DRONE", "@TARDIS_PORT_" in proxy),
                ("CVMFS_SERVER_URL", profile.cvmfs.server_url or ""),
                ("CVMFS_MOUNT_TIMEOUT_S", CVMFS_MOUNT_TIMEOUT),
            ),
        ),
        SettingsGroup(
            "container",
            (
                ("CONTAINER_RUNTIME", profile.container.runtime),
                ("CONTAINER_IMAGE", profile.container.image or ""),
                ("CONTAINER_BINDS", profile.container.binds),
                ("CONTAINER_GPU", profile.container.gpu_kind),
                ("CONTAINER_APPTAINER", profile.container.apptainer),
                ("CONTAINER_CONTAIN", profile.container.contain),
            ),
        ),
        SettingsGroup(
            "pool and payload",
            (
                ("POOL_COLLECTOR", profile.pool.collector),
                (
                    "CONDOR_KNOBS",
                    [f"{k}={v}" for k, v in sorted(budget.condor_knobs.items())],
                ),
                ("PAYLOAD_ARGV", profile.payload.argv),
                (
                    "PAYLOAD_EXTRA_ENV",
                    [
                        f"{k}={v}"
                        for k, v in sorted(profile.payload.environment.items())
                    ],
                ),
                ("PAYLOAD_STOP_TIMEOUT_MS", PAYLOAD_STOP_TIMEOUT_MS),
            ),
        ),
    ]
    if profile.monitoring.enabled:
        endpoints = profile.pool.endpoints
        groups.append(
            SettingsGroup(
                "monitoring: the watchdog's stages in the order it blames them",
                (
                    ("MONITORING_HEARTBEAT_DIR", profile.monitoring.heartbeat_dir),
                    ("MONITORING_INTERVAL", budget.watchdog_interval),
                    (
                        "MONITORING_ENDPOINTS",
                        [
                            f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                            for h, p in endpoints
                        ],
                    ),
                    ("MONITORING_STAGES", stage_list.watched_stages(mode)),
                ),
            )
        )
    return groups


def _setting_line(name: str, value: Any) -> str:
    """``NAME=value`` with the value quoted for bash (an array for a sequence)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"bad setting name {name!r}")
    if isinstance(value, bool):
        return f"{name}={shbool(value)}"
    if isinstance(value, (list, tuple)):
        return f"{name}=({shwords(value)})"
    text = shquote(value)
    if "=" in text and not text.startswith("'"):
        # shlex leaves `pin-sha256:AB=` bare; shellcheck then reads the
        # assignment as arithmetic (SC2100): quote it anyway
        text = f"'{text}'"
    return f"{name}={text}"


def _settings_block(groups: Sequence[SettingsGroup]) -> list[list[str]]:
    seen: set[str] = set()
    blocks = []
    for group in groups:
        lines = [f"# {comment(group.title)}"] if group.title else []
        for name, value in group.settings:
            if name in seen:
                raise ValueError(f"setting {name} is rendered twice")
            seen.add(name)
            lines.append(_setting_line(name, value))
        blocks.append(lines)
    return blocks


def _library(path: Path) -> tuple[str, str]:
    """(name for the markers, text) of a bash library inserted verbatim."""
    text = path.read_text(encoding="utf-8")
    directory = template_dir()
    try:
        name = str(path.relative_to(directory))
    except ValueError:
        name = path.name
    return name, text if text.endswith("\n") else text + "\n"


def _heredoc_safe(files: Sequence[ConfigFile]) -> None:
    for config in files:
        if not NAME.fullmatch(config.function):
            raise ValueError(f"bad configuration function name {config.function!r}")
        if HEREDOC_END in config.text.splitlines():
            raise ValueError(
                f"{config.function} contains the here-document end {HEREDOC_END}"
            )


def _main_lines(mode: Mode, monitoring: bool) -> list[str]:
    """The body of main(): one line per stage, defined in modes/stages.py."""
    lines = []
    for stage in stage_list.main_stages(mode, monitoring):
        if stage.skipped:
            lines.append(f"stage_skipped {stage.name} {shquote(stage.skipped)}")
        else:
            lines.append(stage.function)
    return lines


def render_drone_script(
    profile: NetworkProfile,
    budget: KeepaliveBudget,
    *,
    site_name: str,
    machine_type: str,
    job_id_variable: str,
) -> str:
    """The drone's job script for one machine type: pure and deterministic.

    ``job_id_variable`` is the environment variable in which the batch system
    puts the job id on the worker (the batch driver says which); the script
    exports it once as ``TNA_JOB_ID``, so the bash never names a batch system.
    Raises ConfigurationError for a value that cannot be written safely.
    """
    if not JOB_ID_VARIABLE.fullmatch(job_id_variable):
        raise ValueError(
            f"job_id_variable: got {job_id_variable!r}; expected an environment "
            "variable name such as SLURM_JOB_ID"
        )
    _check_values(profile)
    mode = modes.get(profile.mode)
    monitoring = profile.monitoring.enabled
    files = mode.config_files(profile, budget)
    _heredoc_safe(files)
    settings = _common_settings(profile, budget, mode, site_name, machine_type)
    settings += mode.settings(profile, budget)
    lib = template_dir() / "lib"
    paths = [lib / name for name in COMMON_LIBRARIES]
    paths += mode.libraries(profile)
    paths += [lib / name for name in PAYLOAD_LIBRARIES]
    if monitoring:
        paths += [lib / name for name in MONITORING_LIBRARIES]
    return render_template(
        "drone.sh.j2",
        site_name=site_name,
        machine_type=machine_type,
        mode=mode.name,
        idle_timeout=(
            f"{budget.idle_timeout}s" if budget.idle_timeout else "not declared"
        ),
        legs=budget.legs(),
        job_id_variable=job_id_variable,
        settings=_settings_block(settings),
        eof=HEREDOC_END,
        config_files=files,
        libraries=[_library(path) for path in paths],
        main=_main_lines(mode, monitoring),
    )
