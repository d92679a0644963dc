"""Site NAT (issue 14, mode ``nat``): the section and the files a site installs.

config.py validates the ``Network.nat`` section (NatSection, Router, Vrrp,
Keeper); render.py turns it into the workers' policy routing (nft ruleset,
routing script with its route keeper, systemd units) and each NAT router's
forwarding, keepalived and conntrackd files. The command is
commands/sitenat.py (``tardis-netadapter site-nat``); docs/site-nat.md is the
site admin's guide.
"""

from .config import Keeper, NatSection, Router, Vrrp
from .render import InstallPaths, RenderedFile, render_router, render_worker

__all__ = [
    "InstallPaths",
    "Keeper",
    "NatSection",
    "RenderedFile",
    "Router",
    "Vrrp",
    "render_router",
    "render_worker",
]
