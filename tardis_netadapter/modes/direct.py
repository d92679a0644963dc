"""Network mode ``direct``: the worker reaches the pool itself (no tunnel, no chain).

It adds no profile section and no bash; its drone says in its log that it has
no tunnel and no chain (both stages are logged skipped), so a drone log reads
the same at every site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..profile import NetworkProfile
from .base import Mode, Stage

if TYPE_CHECKING:
    from ..keepalive import KeepaliveBudget

__all__ = ["DirectMode", "DirectProfile"]


@dataclass(frozen=True)
class DirectProfile(NetworkProfile):
    """The common sections only."""

    def check(self, path: str) -> list[str]:
        problems = super().check(path)
        for proxy, _ in self.cvmfs.forward_references():
            problems.append(
                f"{path}.cvmfs.http_proxy: got {proxy!r} without a tunnel (mode "
                "direct): there is no forward to use"
            )
        return problems


class DirectMode(Mode):
    """Workers with outbound access to the pool."""

    name = "direct"
    summary = "the worker reaches the pool itself"
    profile_class = DirectProfile
    stages = (
        Stage("tunnel", phase="network", skipped="network mode direct"),
        Stage("chain", phase="path", skipped="network mode direct"),
    )

    def warnings(self, profile: NetworkProfile) -> list[tuple[str, str]]:
        # isolation and namespace are common keys (for the modes that capture);
        # a direct drone has no tunnel to isolate, so they change nothing here
        if profile.isolation == "required":
            return [
                (
                    "isolation: required with mode direct: a direct drone has no "
                    "tunnel to isolate, its network is the worker's (ignored)",
                    "remove isolation, or use mode socks with chain.capture: namespace",
                )
            ]
        return []

    def legs(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[tuple[str, str]]:
        return [("worker -> pool (CCB)", budget.knob_text("CCB_HEARTBEAT_INTERVAL"))]


MODE = DirectMode()
