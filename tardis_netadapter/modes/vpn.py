"""Network mode ``vpn``: openconnect into the site's VPN server (ocserv in a DMZ).

Notre Dame's way (seed 003): the site runs an ocserv (or a Cisco AnyConnect
server) in its DMZ; the drone's openconnect connects to it and the payload's
traffic, TCP and UDP, is routed through the VPN's tun device. The VPN runs
inside the drone's private user + network namespace (mode part
modes/netns.py, ``exit: tun``): openconnect is started by the namespace's
init role (it needs CAP_NET_ADMIN there to create and configure the tun
device), the namespace's default route is the tun device, and its nft guard
lets only openconnect's own TLS and DTLS to the server leave through the
outer link. No LD_PRELOAD, no redsocks. Where no namespace can be made, the
fallback (``isolation: preferred``) is openconnect's userspace stack: ocproxy
as a SOCKS server with the preload chain, reported as such.

Credentials never reach the script: it carries the paths of a password file
(fed to ``--passwd-on-stdin`` by redirection) or of a client certificate and
key; this module never opens them. docs/vpn.md (how it works),
docs/configuration.md (keys). Bash: lib/supervise.sh, lib/netns.sh,
lib/vpn.sh.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote as q
from typing import TYPE_CHECKING, Literal, Optional

from ..paths import shell_path
from ..profile import (
    NetworkProfile,
    check_host,
    check_path,
    check_port,
    check_positive,
)
from ..templates import render_template, template_dir
from . import netns
from .base import ConfigFile, Mode, SettingsGroup, Stage
from .socks import (
    DEFAULT_PORT_RANGE,
    SUPERVISOR,
    Proxy,
    endpoint,
    supervisor_settings,
)

if TYPE_CHECKING:
    from ..keepalive import KeepaliveBudget

__all__ = [
    "DEFAULT_DPD",
    "INTERFACE",
    "Vpn",
    "VpnMode",
    "VpnProfile",
    "capture",
    "dpd_interval",
    "fallback_proxychains_conf_text",
    "falls_back",
    "reconnect_bound",
]

#: the tun device openconnect creates inside the namespace (``-i``); the nft
#: guard accepts what leaves through it
INTERFACE = "tun0"
#: DPD interval (s) when no firewall idle timeout is declared: a dead link is
#: noticed after about two intervals, and DPD packets are tiny
DEFAULT_DPD = 15
#: the MTU openconnect may be asked for (IPv4's minimum .. jumbo frames)
MTU_RANGE = (576, 9000)

_USER = re.compile(r"[^\x00-\x20\x7f]{1,256}")
_PIN = re.compile(r"pin-sha256:([A-Za-z0-9+/]{43}=)")
_AUTHGROUP = re.compile(r"[^\x00-\x1f\x7f]{1,256}")


@dataclass(frozen=True)
class Vpn:
    """The site's VPN server and how the drone logs in to it (profile ``vpn``).

    ``password_file`` is read by openconnect on the worker (``--passwd-on-stdin``
    from a redirection); ``certificate`` and ``key`` are paths given to ``-c``
    and ``-k``. ``servercert`` pins the server's public key; ``verify: false``
    drops the pin (openconnect then trusts only what the worker's CA store
    trusts; ``check`` warns). ``dpd`` is openconnect's ``--force-dpd``,
    derived from the firewall's idle timeouts when unset.
    """

    server: str = ""
    port: int = 443
    servercert: Optional[str] = None
    verify: bool = True
    user: Optional[str] = None
    password_file: Optional[str] = None
    certificate: Optional[str] = None
    key: Optional[str] = None
    authgroup: Optional[str] = None
    dtls: bool = True
    protocol: Literal["anyconnect"] = "anyconnect"
    mtu: Optional[int] = None
    reconnect_timeout: int = 0
    dpd: Optional[int] = None
    #: the site firewall's idle timeout for UDP flows (DTLS); null: the same as
    #: firewall.idle_timeout
    udp_idle_timeout: Optional[int] = None
    #: ``ocproxy``: without a namespace (isolation: preferred), openconnect's
    #: userspace stack as a SOCKS server and the preload chain; ``none``
    fallback: Literal["ocproxy", "none"] = "ocproxy"
    #: the fallback's SOCKS port (ocproxy -D, on 127.0.0.1) is chosen per drone
    #: from this range, as socks' auto ports are
    port_range: tuple[int, ...] = DEFAULT_PORT_RANGE
    #: the fallback's proxychains-ng preload library; null: the usual places
    library: Optional[str] = None
    #: IPv4 networks the namespace reaches through the outer link, not the VPN
    localnet: tuple[str, ...] = ()
    #: how long the VPN may take to come up and reach the collector (s)
    ready_timeout: float = 30.0

    def check(self, path: str) -> list[str]:
        problems = self._check_server(path) + self._check_credentials(path)
        if self.authgroup is not None and not _AUTHGROUP.fullmatch(self.authgroup):
            problems.append(
                f"{path}.authgroup: got {self.authgroup!r}; expected the group's "
                "name as the server lists it (one line, no control characters)"
            )
        if self.mtu is not None:
            low, high = MTU_RANGE
            if isinstance(self.mtu, bool) or not low <= self.mtu <= high:
                problems.append(
                    f"{path}.mtu: got {self.mtu!r}; expected a whole number from "
                    f"{low} to {high}, or remove the key (the server's choice)"
                )
        if self.reconnect_timeout < 0:
            problems.append(
                f"{path}.reconnect_timeout: got {self.reconnect_timeout!r}; "
                "expected 0 or more seconds (how long openconnect retries on "
                "its own before the drone's supervisor starts a new one)"
            )
        problems += check_positive(f"{path}.dpd", self.dpd, "a time in seconds")
        problems += check_positive(
            f"{path}.udp_idle_timeout",
            self.udp_idle_timeout,
            "a time in seconds (or null)",
        )
        problems += check_positive(
            f"{path}.ready_timeout", self.ready_timeout, "a time in seconds"
        )
        problems += self._check_fallback(path)
        for index, net in enumerate(self.localnet):
            try:
                parsed = ipaddress.ip_network(net, strict=False)
            except ValueError:
                parsed = None
            if not isinstance(parsed, ipaddress.IPv4Network):
                problems.append(
                    f"{path}.localnet[{index}]: got {net!r}; expected an IPv4 "
                    "network such as 10.0.0.0/8 (the namespace is IPv4 only)"
                )
        return problems

    def _check_fallback(self, path: str) -> list[str]:
        """The fallback's port range (room for a retry) and library path."""
        problems = []
        got = f"{path}.port_range: got {list(self.port_range)!r}"
        if len(self.port_range) != 2:
            problems.append(f"{got}; expected [LOW, HIGH], e.g. [20000, 32767]")
        elif not 1024 <= self.port_range[0] < self.port_range[1] <= 65535:
            problems.append(
                f"{got}; expected 1024 <= LOW < HIGH <= 65535 (ports below "
                "1024 need root)"
            )
        if self.library is not None:
            problems += check_path(
                f"{path}.library",
                self.library,
                "libproxychains4.so on the workers (the fallback's preload)",
            )
        return problems

    def _check_server(self, path: str) -> list[str]:
        if not self.server:
            return [
                f"{path}.server: missing; give the VPN server's host name or "
                "IPv4 address (e.g. vpn.dmz.example.edu)"
            ]
        problems = check_host(f"{path}.server", self.server)
        if not problems and ":" in self.server:
            problems.append(
                f"{path}.server: got {self.server!r}; the drone's namespace is "
                "IPv4 only: give an IPv4 address or a host name with one"
            )
        problems += check_port(f"{path}.port", self.port)
        if self.verify and self.servercert is None:
            problems.append(
                f"{path}.servercert: missing; pin the server's key: "
                "servercert: pin-sha256:BASE64= (tardis-netadapter check --probe "
                "shows the pin the login node sees), or set verify: false"
            )
        elif self.servercert is not None and not self.verify:
            problems.append(
                f"{path}.verify: got false with servercert {self.servercert!r}; "
                "a pin is verified or absent: remove verify: false (keeps the "
                "pin), or remove servercert"
            )
        elif self.servercert is not None and not _valid_pin(self.servercert):
            problems.append(
                f"{path}.servercert: got {self.servercert!r}; expected "
                "pin-sha256: and the base64 SHA-256 of the server's public key "
                "(44 characters ending in '='), as openconnect prints it"
            )
        return problems

    def _check_credentials(self, path: str) -> list[str]:
        problems = []
        for key, what in (
            ("password_file", "a 0600 file with the VPN password, on the workers"),
            ("certificate", "the client certificate (PEM or PKCS#12) on the workers"),
            ("key", "the client certificate's private key on the workers"),
        ):
            value = getattr(self, key)
            if value is not None:
                problems += check_path(f"{path}.{key}", value, what)
        if self.user is not None and not _USER.fullmatch(self.user):
            problems.append(
                f"{path}.user: got {self.user!r}; expected the VPN user name "
                "(no spaces or control characters)"
            )
        if self.password_file is None and self.certificate is None:
            problems.append(
                f"{path}.password_file: missing, and no certificate; give user "
                "and password_file (a 0600 file on the shared file system), or "
                "certificate and key"
            )
        if self.password_file is not None and self.user is None:
            problems.append(
                f"{path}.user: missing with password_file; give the VPN user "
                "name the password belongs to"
            )
        if self.key is not None and self.certificate is None:
            problems.append(
                f"{path}.key: got {self.key!r} without certificate; give the "
                "client certificate too, or remove key"
            )
        return problems


def _valid_pin(value: str) -> bool:
    """``pin-sha256:`` and the base64 of exactly 32 bytes."""
    match = _PIN.fullmatch(value)
    if not match:
        return False
    try:
        return len(base64.b64decode(match.group(1), validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


@dataclass(frozen=True)
class VpnProfile(NetworkProfile):
    """The ``Network`` profile of a VPN site: the common sections and ``vpn``."""

    vpn: Vpn = field(default_factory=Vpn)

    def check(self, path: str) -> list[str]:
        problems = super().check(path)
        for proxy, _ in self.cvmfs.forward_references():
            problems.append(
                f"{path}.cvmfs.http_proxy: got {proxy!r} with mode vpn; there "
                "are no tunnel forwards: give the squid's address (reached "
                "through the VPN) as http://ADDRESS:PORT"
            )
        if self.isolation == "preferred" and self.vpn.fallback == "none":
            problems.append(
                f"{path}.vpn.fallback: got 'none' with isolation 'preferred'; "
                "without a namespace the drone needs a fallback: set "
                "vpn.fallback: ocproxy, or isolation: required"
            )
        problems += netns.problems(path, f"{path}.vpn", self, capture(self))
        return problems + _check_dpd(path, self)


def _timeouts(profile: VpnProfile) -> list[tuple[str, int]]:
    """(key, seconds) of every firewall idle timeout the VPN's flows meet."""
    found = []
    tcp = profile.firewall.idle_timeout
    if tcp:
        found.append(("firewall.idle_timeout", tcp))
    if profile.vpn.dtls:
        udp = profile.vpn.udp_idle_timeout or tcp
        if udp:
            key = (
                "vpn.udp_idle_timeout"
                if profile.vpn.udp_idle_timeout
                else "firewall.idle_timeout"
            )
            found.append((key, udp))
    return found


def dpd_interval(profile: VpnProfile) -> int:
    """openconnect's DPD interval (s): the configured one, else half the
    shortest idle timeout the VPN's flows meet (two probes per timeout), at
    most DEFAULT_DPD."""
    if profile.vpn.dpd is not None:
        return profile.vpn.dpd
    timeouts = [seconds for _, seconds in _timeouts(profile)]
    if not timeouts:
        return DEFAULT_DPD
    return max(1, min(DEFAULT_DPD, min(timeouts) // 2))


def _check_dpd(path: str, profile: VpnProfile) -> list[str]:
    """An explicit DPD must beat every idle timeout, as ssh's probes must."""
    dpd = profile.vpn.dpd
    if dpd is None or not profile.keepalive.enabled:
        return []
    for key, seconds in _timeouts(profile):
        if dpd >= seconds:
            return [
                f"{path}.vpn.dpd: got {dpd}; it is not below {path}.{key}="
                f"{seconds}, so the firewall drops the idle VPN between two "
                f"DPD probes. Use at most {max(1, seconds // 2)} or remove the "
                "key to derive it"
            ]
    return []


def capture(profile: VpnProfile) -> netns.Capture:
    """The VPN as the netns part sees it: always a namespace, routed out of
    the tun device; without a namespace the fallback is ocproxy's SOCKS."""
    vpn = profile.vpn
    return netns.Capture(
        method="namespace",
        localnet=vpn.localnet,
        route=vpn_route(profile),
        fallback_tool="ocproxy" if vpn.fallback == "ocproxy" else "none",
        exit="tun",
        interface=INTERFACE,
    )


def falls_back(profile: VpnProfile) -> bool:
    """True when a drone without a namespace uses the ocproxy fallback
    (``isolation: preferred`` with ``fallback: ocproxy``): only then does the
    script carry the preload chain (lib/chain.sh) and its configuration."""
    return profile.isolation != "required" and profile.vpn.fallback == "ocproxy"


#: the fallback's SOCKS port in its proxychains configuration, put in by
#: lib/vpn.sh once the drone chose it (the placeholder socks' port 0 has)
FALLBACK_PORT = "@TARDIS_PORT_0@"


def fallback_proxychains_conf_text(profile: VpnProfile) -> str:
    """proxychains-ng configuration of the fallback: strict chain to ocproxy's
    SOCKS port on 127.0.0.1; names go to ocproxy (proxy_dns), which resolves
    them with the DNS servers the VPN hands out; localnet stays direct."""
    nets = [ipaddress.IPv4Network("127.0.0.0/8")]
    for text in profile.vpn.localnet:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network) and net not in nets:
            nets.append(net)
    return render_template(
        "conf/proxychains.conf.j2",
        route=(
            f"fallback without a namespace: ocproxy (openconnect's userspace "
            f"stack) to {endpoint(profile.vpn.server, profile.vpn.port)}"
        ),
        spread=False,
        quiet=True,
        remote_dns=True,
        localnet=[f"{n.network_address}/{n.netmask}" for n in nets],
        proxies=[Proxy("socks5", "127.0.0.1", FALLBACK_PORT)],  # type: ignore[arg-type]
    )


def vpn_route(profile: VpnProfile) -> str:
    """Human wording of the VPN for log lines and headers."""
    vpn = profile.vpn
    transport = "DTLS, else TLS" if vpn.dtls else "TLS only"
    return (
        f"openconnect ({vpn.protocol}) to {endpoint(vpn.server, vpn.port)} "
        f"({transport}), tun device {INTERFACE}"
    )


def reconnect_bound(profile: VpnProfile) -> int:
    """Worst case (s) from the server's return to a VPN up again.

    openconnect retries on its own for ``reconnect_timeout``; then the
    builtin supervisor starts a new one: a back-off of at most its cap, one
    probe interval, the spread and the wait for a node start slot, and the
    new connection's ready timeout.
    """
    t = SUPERVISOR
    ms = t.backoff_cap_ms + t.probe_max_ms + t.spread_ms + t.slot_wait_ms
    return (
        profile.vpn.reconnect_timeout
        + math.ceil(ms / 1000)
        + math.ceil(profile.vpn.ready_timeout)
    )


class VpnMode(Mode):
    """openconnect into the site's VPN server, inside the drone's namespace."""

    name = "vpn"
    summary = (
        "openconnect into the site's VPN server; the payload's traffic is "
        "routed through its tun device inside a private namespace"
    )
    profile_class = VpnProfile
    stages = (netns.STAGE, Stage("vpn", "vpn_stage", phase="network"))

    # -- the keepalive budget ----------------------------------------------------

    def legs(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[tuple[str, str]]:
        assert isinstance(profile, VpnProfile)
        vpn, dpd = profile.vpn, dpd_interval(profile)
        port = vpn.port
        found = [
            (
                f"worker -> VPN server, TLS (tcp/{port})",
                f"openconnect DPD every {dpd}s (--force-dpd)",
            )
        ]
        if vpn.dtls:
            udp = vpn.udp_idle_timeout or profile.firewall.idle_timeout
            limit = f"; UDP idle timeout {udp}s" if udp else ""
            found.append(
                (
                    f"worker -> VPN server, DTLS (udp/{port}{limit})",
                    f"openconnect DPD every {dpd}s over DTLS",
                )
            )
        found += netns.legs(
            profile,
            budget,
            capture(profile),
            carrier=f"carried inside openconnect's TLS/DTLS (DPD every {dpd}s)",
        )
        found.append(
            (
                "VPN server -> pool (the payload's own flows, routed)",
                budget.knob_text("CCB_HEARTBEAT_INTERVAL"),
            )
        )
        return found

    def reconnect_delay(self, profile: NetworkProfile) -> int:
        assert isinstance(profile, VpnProfile)
        return reconnect_bound(profile)

    # -- the drone script --------------------------------------------------------

    def libraries(self, profile: NetworkProfile) -> list[Path]:
        # no capture.sh: inside the namespace nothing is redirected or
        # preloaded; chain.sh (its library lookup and the payload's preload
        # environment) only for the ocproxy fallback
        assert isinstance(profile, VpnProfile)
        names = ["supervise.sh", "netns.sh", "vpn.sh"]
        if falls_back(profile):
            names.insert(2, "chain.sh")
        lib = template_dir() / "lib"
        return [lib / name for name in names]

    def settings(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[SettingsGroup]:
        assert isinstance(profile, VpnProfile)
        vpn = profile.vpn
        ready_ms = int(vpn.ready_timeout * 1000)
        endpoints = profile.pool.endpoints
        probe_host, probe_port = endpoints[0] if profile.pool.collector else ("", "")
        return [
            SettingsGroup(
                "vpn: openconnect to the site's VPN server (lib/vpn.sh); "
                "credentials are paths, never values",
                (
                    ("VPN_SERVER", vpn.server),
                    ("VPN_PORT", vpn.port),
                    ("VPN_SERVERCERT", vpn.servercert or ""),
                    ("VPN_USER", vpn.user or ""),
                    ("VPN_PASSWORD_FILE", vpn.password_file or ""),
                    ("VPN_CERTIFICATE", vpn.certificate or ""),
                    ("VPN_KEY", vpn.key or ""),
                    ("VPN_AUTHGROUP", vpn.authgroup or ""),
                    ("VPN_DTLS", vpn.dtls),
                    ("VPN_PROTOCOL", vpn.protocol),
                    ("VPN_MTU", "" if vpn.mtu is None else vpn.mtu),
                    ("VPN_RECONNECT_TIMEOUT", vpn.reconnect_timeout),
                    ("VPN_DPD", dpd_interval(profile)),
                    ("VPN_FALLBACK", vpn.fallback),
                    ("VPN_INTERFACE", INTERFACE),
                    ("VPN_ROUTE", vpn_route(profile)),
                    ("VPN_READY_TIMEOUT_MS", ready_ms),
                    ("VPN_PROBE_HOST", probe_host),
                    ("VPN_PROBE_PORT", probe_port),
                    # the keeper's first hops (socks: TUNNEL_FIRST_HOPS)
                    ("NS_FIRST_HOPS", [endpoint(vpn.server, vpn.port)]),
                ),
            ),
            supervisor_settings(ready_ms),
            netns.settings(profile, capture(profile)),
        ] + self._fallback_settings(profile)

    def _fallback_settings(self, profile: VpnProfile) -> list[SettingsGroup]:
        """The ocproxy fallback's port range and preload chain (lib/chain.sh)."""
        if not falls_back(profile):
            return []
        return [
            SettingsGroup(
                "vpn fallback without a namespace: ocproxy's SOCKS port on "
                "127.0.0.1 (chosen per drone from VPN_SOCKS_PORT_RANGE) and the "
                "proxychains-ng preload chain to it (lib/vpn.sh, lib/chain.sh)",
                (
                    ("VPN_SOCKS_PORT_RANGE", list(profile.vpn.port_range)),
                    ("CHAIN_TOOL", "proxychains"),
                    ("CHAIN_LIBRARY", profile.vpn.library or ""),
                    ("CHAIN_QUIET", True),
                ),
            )
        ]

    def config_files(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[ConfigFile]:
        assert isinstance(profile, VpnProfile)
        files = netns.config_files(capture(profile))
        if falls_back(profile):
            text = fallback_proxychains_conf_text(profile)
            files.append(ConfigFile("write_proxychains_conf", text))
        return files

    # -- tardis-netadapter check -------------------------------------------------

    def warnings(self, profile: NetworkProfile) -> list[tuple[str, str]]:
        assert isinstance(profile, VpnProfile)
        found = []
        if not profile.vpn.verify:
            found.append(
                (
                    "vpn.verify is false: the VPN server is not pinned; "
                    "openconnect accepts any certificate the worker's CA store "
                    "trusts",
                    "pin the server: vpn.servercert: pin-sha256:... (check "
                    "--probe shows the pin the login node sees) and remove verify",
                )
            )
        if not profile.vpn.dtls:
            found.append(
                (
                    "vpn.dtls is false: the payload's TCP runs inside the VPN's "
                    "TCP (TCP over TCP: slow on loss, seed 003 measured 38 % of "
                    "direct)",
                    "remove dtls: false unless the site blocks udp/"
                    f"{profile.vpn.port} (openconnect falls back to TLS itself)",
                )
            )
        return found + netns.warnings(profile, capture(profile))

    def probe_lines(self, profile: NetworkProfile) -> list[str]:
        assert isinstance(profile, VpnProfile)
        vpn = profile.vpn
        required = profile.isolation == "required"
        lines = [
            # openconnect lives in /usr/sbin on Debian: not on a user's PATH
            'p=$(PATH="$PATH:/usr/sbin:/sbin" command -v openconnect 2>/dev/null)',
            'if [ -n "$p" ]; then mark cmd:openconnect ok "$p"; '
            "else mark cmd:openconnect fail missing; fi",
            "have timeout",
        ]
        if vpn.fallback == "ocproxy" and not required:
            lines.append("have ocproxy")
            if vpn.library is None:
                lines.append("have proxychains4")
        lines += netns.probe_lines(profile, capture(profile))
        for key in ("password_file", "certificate", "key"):
            value = getattr(vpn, key)
            if value is None:
                continue
            name = f"vpn-{key.replace('_', '-')}"
            lines += [
                f"f={shell_path(value)}",
                f'if [ -r "$f" ]; then mark {name} ok "$f"; '
                f'else mark {name} fail "$f: not readable"; fi',
            ]
            if key == "password_file":
                # the drone refuses a password file others may read: say so now
                # (find tests the mode; nothing here reads the file's content)
                lines.append(
                    'if [ -r "$f" ] && [ -n "$(find "$f" -maxdepth 0 -perm /077 '
                    '2>/dev/null)" ]; then mark vpn-password-mode fail "$f: '
                    'group or others have access (chmod 600)"; fi'
                )
        return lines + _pin_probe(vpn)

    def probe_fix(self, name: str) -> Optional[str]:
        return _PROBE_FIXES.get(name) or netns.probe_fix(name)


#: a well-formed pin no server has: openconnect then names the real one
WRONG_PIN = "pin-sha256:" + base64.b64encode(bytes(32)).decode()


def _pin_probe(vpn: Vpn) -> list[str]:
    """Lines that show the pin the login node sees and compare it.

    openconnect with a deliberately wrong pin fails the TLS handshake and
    names the server's real ``pin-sha256:`` in its message (openconnect 8
    and 9: "None of the 1 fingerprint(s) specified via --servercert match
    server's certificate: pin-sha256:..."). Nothing is sent but the
    handshake: it fails before any login.
    """
    url = f"https://{endpoint(vpn.server, vpn.port)}/"
    configured = vpn.servercert or ""
    return [
        f"u={q(url)}",
        f'o=$(PATH="$PATH:/usr/sbin:/sbin" timeout 15 openconnect --non-inter '
        f'--authenticate --servercert {q(WRONG_PIN)} "$u" </dev/null 2>&1)',
        "s=$(printf '%s\\n' \"$o\" | grep -o 'pin-sha256:[A-Za-z0-9+/=]*' | "
        f"grep -v -F {q(WRONG_PIN)} | head -n 1)",
        f"c={q(configured)}",
        'if [ -z "$s" ]; then mark vpn-pin fail "no pin from $u: $(printf '
        '\'%s\' "$o" | tail -n 1)"; '
        'elif [ -z "$c" ]; then mark vpn-pin ok "server shows $s (not pinned)"; '
        'elif [ "$s" = "$c" ]; then mark vpn-pin ok "server shows $s, as '
        'configured"; '
        'else mark vpn-pin fail "server shows $s, configured $c"; fi',
    ]


_PROBE_FIXES = {
    "cmd:openconnect": "install openconnect on the workers (Debian/EL package "
    "openconnect; checked here on the login node)",
    "cmd:timeout": "install coreutils (timeout) on the workers",
    "cmd:ocproxy": "install ocproxy on the workers (the fallback without a "
    "namespace), or set Network.isolation: required",
    "cmd:proxychains4": "install proxychains4 (proxychains-ng) on the workers "
    "(the fallback's preload chain), set Network.vpn.library, or set "
    "Network.isolation: required",
    "vpn-password-file": "create Network.vpn.password_file on the shared file "
    "system with the VPN password, mode 0600, owned by the drone user",
    "vpn-password-mode": "chmod 600 the password file (the drone refuses a file "
    "others can read)",
    "vpn-certificate": "put the client certificate at Network.vpn.certificate",
    "vpn-key": "put the client key at Network.vpn.key (mode 0600)",
    "vpn-pin": "compare the server's pin with the one the site publishes; if it "
    "is the site's, set Network.vpn.servercert to it (if the login node cannot "
    "reach the server, run openconnect --servercert pin-sha256:x SERVER on a "
    "worker and read the pin from its message)",
}

MODE = VpnMode()
