"""``tardis-netadapter site-nat CONFIG [--site NAME] --out DIR``: the site's NAT files.

Renders, from the site's ``Network.nat`` section (mode ``nat``), the files a
site admin installs: ``DIR/worker/`` for every worker (the drone users' policy
routing and its route keeper) and ``DIR/routers/NAME/`` for each NAT router
(forwarding, SNAT, keepalived, conntrackd), then prints where each file goes.
A file that exists with other contents is not overwritten without --force;
``--print worker/FILE`` shows one file instead. docs/site-nat.md is the guide.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from ..schema import ConfigurationError, plain

__all__ = ["add_parser", "nat_sites", "rendered_tree", "run"]

#: units enabled on each kind of host, in start order
WORKER_UNITS = ("tna-nat-routing.service", "tna-nat-route-keeper.service")
ROUTER_UNITS = (
    "tna-nat-router.service",
    "tna-nat-conntrackd.service",
    "tna-nat-keepalived.service",
)


def add_parser(subparsers: Any) -> None:
    """Register ``site-nat``."""
    parser = subparsers.add_parser(
        "site-nat",
        help="render the workers' and NAT routers' files of a mode-nat site",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("config", type=Path, help="cobald.yml or TARDIS YAML")
    parser.add_argument(
        "--site", help="site name in Sites (default: the only site with mode nat)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--out", type=Path, help="directory to write worker/ and routers/NAME/ into"
    )
    target.add_argument(
        "--print",
        dest="print_file",
        metavar="FILE",
        help="print one rendered file (worker/FILE or routers/NAME/FILE) and write nothing",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite files in DIR whose contents differ",
    )
    parser.set_defaults(func=run)


def nat_sites(tardis: Mapping[str, Any]) -> dict[str, str]:
    """Every site of the configuration and its network mode (``?`` if unreadable)."""
    found = {}
    for entry in tardis.get("Sites") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        name = entry["name"]
        section = tardis.get(name)
        network = section.get("Network") if isinstance(section, Mapping) else None
        mode = network.get("mode", "socks") if isinstance(network, Mapping) else "?"
        found[name] = mode if isinstance(mode, str) else "?"
    return found


def load_nat_section(config: Path, site: Optional[str]) -> tuple[str, Any]:
    """(site name, validated NatSection) of ``config``; ConfigurationError naming
    the key and the fix when there is no usable nat section."""
    from ..siteconfig import read_yaml, tardis_section
    from ..sitenat.config import NatSection

    tardis, source = tardis_section(read_yaml(config), config)
    modes = nat_sites(tardis)
    listed = ", ".join(f"{n} (mode {m})" for n, m in modes.items()) or "none"
    if site is None:
        candidates = [name for name, mode in modes.items() if mode == "nat"]
        if not candidates:
            raise ConfigurationError(
                [
                    f"{source}: no site with Network.mode: nat (sites: {listed}); "
                    "site-nat renders from a site's Network.nat section: set "
                    "mode: nat and add the nat section (docs/site-nat.md)"
                ]
            )
        if len(candidates) > 1:
            raise ConfigurationError(
                [
                    f"{source}: {len(candidates)} sites with mode nat "
                    f"({', '.join(candidates)}); choose one with --site"
                ]
            )
        site = candidates[0]
    elif site not in modes:
        raise ConfigurationError(
            [f"{source}: Sites: no site named {site!r}; known: {listed}"]
        )
    elif modes[site] != "nat":
        raise ConfigurationError(
            [
                f"{site}.Network.mode: got {modes[site]!r}; site-nat renders the "
                "NAT of a site with mode: nat: set it and add the nat section "
                "(docs/site-nat.md)"
            ]
        )
    network = plain(tardis[site]["Network"])
    if "nat" not in network:
        raise ConfigurationError(
            [
                f"{site}.Network.nat: missing; mode nat needs the nat section "
                "(gateway, public_address, users, site_subnets, routers, ...): "
                "see docs/configuration.md"
            ]
        )
    nat, problems = NatSection.from_mapping(network["nat"], f"{site}.Network.nat")
    if problems or nat is None:
        raise ConfigurationError(problems or [f"{site}.Network.nat: invalid"])
    return site, nat


def rendered_tree(nat: Any, paths: Any = None) -> dict[str, Any]:
    """``{relative path: RenderedFile}``: ``worker/FILE`` and ``routers/NAME/FILE``."""
    from ..sitenat.render import InstallPaths, render_router, render_worker

    paths = paths or InstallPaths()
    tree = {f"worker/{n}": f for n, f in render_worker(nat, paths).items()}
    for router in nat.routers:
        for name, rendered in render_router(nat, router.name, paths).items():
            tree[f"routers/{router.name}/{name}"] = rendered
    return tree


def _differs(path: Path, rendered: Any) -> bool:
    """Whether ``path`` exists with other contents or permission bits."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError):
        return True
    return text != rendered.text or mode != rendered.mode


def write_tree(tree: Mapping[str, Any], out: Path, force: bool) -> list[str]:
    """Write every file; refuse (writing nothing) when one would be overwritten
    with other contents and ``force`` is false. Returns "written"/"unchanged"
    lines."""
    conflicts = [name for name, f in tree.items() if _differs(out / name, f)]
    if conflicts and not force:
        raise ConfigurationError(
            [
                f"{out / name}: exists with other contents; not overwritten (use "
                "--force to replace it, or another --out)"
                for name in conflicts
            ]
        )
    report = []
    for name, rendered in tree.items():
        target = out / name
        if target.exists() and not _differs(target, rendered):
            report.append(f"unchanged {target}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(rendered.text, encoding="utf-8")
        os.chmod(temporary, rendered.mode)
        os.replace(temporary, target)
        report.append(f"wrote     {target}")
    return report


def install_steps(tree: Mapping[str, Any], out: Path, nat: Any) -> str:
    """What a site admin runs on each host, as shell lines."""
    lines = ["", "Install on every worker (as root):"]
    lines += _installs(tree, out, "worker/")
    lines += [
        "  systemctl daemon-reload",
        f"  systemctl enable --now {' '.join(WORKER_UNITS)}",
        f"  {tree['worker/tna-nat-routing'].install} check",
    ]
    for router in nat.routers:
        prefix = f"routers/{router.name}/"
        units = [u for u in ROUTER_UNITS if prefix + u in tree]
        lines += ["", f"Install on the NAT router {router.name} (as root):"]
        lines += _installs(tree, out, prefix)
        lines += [
            "  # the distribution's own units would start a second keepalived/conntrackd",
            "  systemctl disable --now keepalived.service conntrackd.service || true",
            "  systemctl daemon-reload",
            f"  systemctl enable --now {' '.join(units)}",
        ]
    if not nat.routers:
        lines += [
            "",
            "No routers in nat.routers: only the workers' files were rendered (the "
            "site runs its own NAT routers).",
        ]
    lines += ["", "docs/site-nat.md explains each file and how to verify the path."]
    return "\n".join(lines)


def _installs(tree: Mapping[str, Any], out: Path, prefix: str) -> list[str]:
    return [
        f"  install -D -m {rendered.mode:04o} {out / name} {rendered.install}"
        for name, rendered in tree.items()
        if name.startswith(prefix)
    ]


def run(args: argparse.Namespace) -> int:
    """Render and write (or print one file); ConfigurationError (exit 2) says why."""
    site, nat = load_nat_section(args.config, args.site)
    tree = rendered_tree(nat)
    if args.print_file is not None:
        name = args.print_file.strip("/")
        if name not in tree:
            raise ConfigurationError(
                [
                    f"--print: got {args.print_file!r}; expected one of: "
                    + ", ".join(tree)
                ]
            )
        sys.stdout.write(tree[name].text)
        return 0
    report = write_tree(tree, args.out, args.force)
    print(f"tardis-netadapter site-nat: site {site}, into {args.out}")
    print("\n".join(f"  {line}" for line in report))
    print(install_steps(tree, args.out, nat))
    return 0
