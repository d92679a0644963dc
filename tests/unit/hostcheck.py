"""Whether this host can run the unit tests that build throwaway namespaces.

Several unit tests run drone-script bash for real (tests/unit/test_netns_sh.py,
test_vpn_sh.py, ...): they need root, some Debian tools and unprivileged user
namespaces for the drone's uid. One function says why not, so each module
skips with the same honest reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

#: the uid the drone roles of these tests run as
NOBODY = 65534
#: where Debian keeps daemons that a root shell may not have on PATH
SBIN = ":/usr/sbin:/sbin"


def unavailable(tools: tuple[str, ...], needs_root_for: str) -> str:
    """Empty when root, every tool and a user namespace for NOBODY are here,
    else the first reason they are not (``needs_root_for`` says why root)."""
    if os.geteuid() != 0:
        return f"needs root {needs_root_for}"
    path = os.environ.get("PATH", "") + SBIN
    missing = [tool for tool in tools if shutil.which(tool, path=path) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/install-system-deps)"
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        + ["unshare", "-Urn", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"unprivileged user namespaces unavailable: {probe.stderr.strip()}"
    return ""
