"""What the modes that only check the site's own path share (``nat``,
``container-net``): no tunnel forwards to point CVMFS at, and one HOST:PORT
their check connects to, ``check_target`` or else the pool's collector.
"""

from __future__ import annotations

from ..profile import NetworkProfile
from ..sitenat.config import split_target

__all__ = ["check_endpoint", "path_problems"]


def path_problems(
    profile: NetworkProfile,
    path: str,
    mode: str,
    section: str,
    check_target: str,
    squid_hint: str,
    check_needs: str,
) -> list[str]:
    """``cvmfs.http_proxy: forward:NAME`` (there are no forwards) and a check
    with nothing to connect to, in the words of mode ``mode`` (``squid_hint``
    ends the first fix, ``check_needs`` says what the check needs)."""
    problems = [
        f"{path}.cvmfs.http_proxy: got {proxy!r} with mode {mode}; there are no "
        f"tunnel forwards: give the squid's address as http://ADDRESS:PORT{squid_hint}"
        for proxy, _ in profile.cvmfs.forward_references()
    ]
    if not check_target and not profile.pool.collector:
        problems.append(
            f"{path}.{section}.check_target: missing, and pool.collector is "
            f"empty; {check_needs}: set pool.collector or {section}.check_target"
        )
    return problems


def check_endpoint(profile: NetworkProfile, check_target: str) -> tuple[str, int]:
    """What the check connects to: ``check_target``, else the collector."""
    found = split_target(check_target) if check_target else None
    return found if found is not None else profile.pool.endpoints[0]
