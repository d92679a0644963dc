"""The cvmfsexec / mountrepo / umountrepo stand-in, against a manifest on 127.0.0.1.

A stratum-1 stand-in (http.server) and a forward HTTP proxy run in threads on
loopback; the proxy records what it forwarded so the tests can tell whether
the manifest really travelled through CVMFS_HTTP_PROXY.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

STANDINS = Path(__file__).resolve().parents[1] / "tardis_netadapter_lab" / "standins"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
REPO = "atlas.cern.ch"
MANIFEST = (
    b"C600230b0ba7620426f2e898f1e1f43c5466efe59\nNatlas.cern.ch\nS4711\n--\nsig\n"
)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Stratum(Quiet):
    """Serves /cvmfs/<repo>/.cvmfspublished like a stratum 1."""

    manifests: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.manifests.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


class Proxy(Quiet):
    """A forward proxy: GET http://host/path, fetched directly, recorded."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.path, timeout=5) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(handler: type) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def stratum() -> Iterator[str]:
    Stratum.manifests = {f"/cvmfs/{REPO}/.cvmfspublished": MANIFEST}
    for server in serve(Stratum):
        yield f"http://127.0.0.1:{server.server_address[1]}/cvmfs/@fqrn@"


@pytest.fixture
def proxy() -> Iterator[str]:
    Proxy.seen = []
    for server in serve(Proxy):
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, not listening)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def install() -> Iterator[Path]:
    """bin/{cvmfsexec,mountrepo,umountrepo} + bin/dist, readable by any user."""
    top = Path(tempfile.mkdtemp(prefix="tna-cvmfsexec-"))
    top.chmod(0o755)
    bin_dir = top / "bin"
    bin_dir.mkdir(mode=0o755)
    for name in ("cvmfsexec", "mountrepo", "umountrepo"):
        shutil.copy(STANDINS / "cvmfsexec.py", bin_dir / name)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "dist" / "etc" / "cvmfs").mkdir(parents=True)
    try:
        yield bin_dir
    finally:
        shutil.rmtree(top, ignore_errors=True)


def configure(bin_dir: Path, proxy: str, server: str) -> None:
    (bin_dir / "dist/etc/cvmfs/default.local").write_text(
        f"# site settings\nCVMFS_HTTP_PROXY='{proxy}'\nCVMFS_SERVER_URL=\"{server}\"\n"
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CVMFS") and k.lower() not in ("http_proxy", "no_proxy")
    }
    env.update(extra)
    return env


def run(
    bin_dir: Path, name: str, *args: str, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
        cwd=bin_dir,
    )


def test_mountrepo_fetches_the_manifest_through_the_proxy(install, stratum, proxy):
    configure(install, proxy, stratum)
    result = run(install, "mountrepo", REPO)
    assert result.returncode == 0, result.stderr
    mounted = install / "dist/cvmfs" / REPO
    assert (mounted / ".cvmfspublished").read_bytes() == MANIFEST
    assert f"proxy: {proxy}" in (mounted / "README").read_text()
    assert f"mounted cvmfs on {mounted}" in result.stdout
    assert Proxy.seen == [stratum.replace("@fqrn@", REPO) + "/.cvmfspublished"]

    assert run(install, "umountrepo", REPO).returncode == 0
    assert not mounted.exists()
    again = run(install, "umountrepo", REPO)
    assert again.returncode == 1 and "not found" in again.stderr


def test_wrong_proxy_fails_like_a_broken_site_route(install, stratum, dead_port):
    configure(install, f"http://127.0.0.1:{dead_port}", stratum)
    result = run(install, "mountrepo", REPO)
    assert result.returncode == 16
    assert f"Failed to mount {REPO}: " in result.stderr
    assert f"127.0.0.1:{dead_port}" in result.stderr
    assert not (install / "dist/cvmfs" / REPO).exists()


def test_direct_and_failover_lists(install, stratum, proxy, dead_port):
    configure(install, f"http://127.0.0.1:{dead_port}", stratum)
    direct = run(install, "mountrepo", REPO, CVMFS_HTTP_PROXY="DIRECT")
    assert direct.returncode == 0, direct.stderr  # environment wins over the file
    assert Proxy.seen == []
    failover = run(
        install,
        "mountrepo",
        REPO,
        CVMFS_HTTP_PROXY=f"http://127.0.0.1:{dead_port};{proxy}",
    )
    assert failover.returncode == 0, failover.stderr
    assert len(Proxy.seen) == 1
    assert run(install, "umountrepo", "-a").returncode == 0
    assert not (install / "dist/cvmfs" / REPO).exists()


def test_manifest_of_another_repository_is_refused(install, stratum, proxy):
    configure(install, proxy, stratum)
    Stratum.manifests["/cvmfs/cms.cern.ch/.cvmfspublished"] = MANIFEST
    result = run(install, "mountrepo", "cms.cern.ch")
    assert result.returncode == 16
    assert "manifest is for atlas.cern.ch" in result.stderr
    missing = run(install, "mountrepo", "lhcb.cern.ch")
    assert missing.returncode == 16 and "404" in missing.stderr


def test_missing_settings_exit_2(install):
    result = run(install, "mountrepo", REPO)
    assert result.returncode == 2
    assert f"Failed to mount {REPO}: CVMFS_SERVER_URL is not set" in result.stderr


def test_cvmfsexec_runs_the_command_with_cvmfs_and_cleans_up(install, stratum, proxy):
    configure(install, proxy, stratum)
    host_had_cvmfs = os.path.exists("/cvmfs")
    # /tmp is shared: only scaffolds this run makes count
    before = set(Path(tempfile.gettempdir()).glob("cvmfsexec-root-*/cvmfs"))
    script = 'echo "dir=$CVMFS_MOUNT_DIR"; cat "$CVMFS_MOUNT_DIR/atlas.cern.ch/README"; exit 7'
    result = run(install, "cvmfsexec", REPO, "--", "sh", "-c", script)
    assert result.returncode == 7, result.stderr
    assert "atlas.cern.ch: cvmfsexec stand-in mount" in result.stdout
    if "dir=/cvmfs" in result.stdout:  # namespaces available: the real tool's view
        assert os.path.exists("/cvmfs") == host_had_cvmfs, "must not touch the host /"
    else:
        assert f"dir={install / 'dist/cvmfs'}" in result.stdout
    assert not (install / "dist/cvmfs" / REPO).exists(), "unmounted on exit"
    after = set(Path(tempfile.gettempdir()).glob("cvmfsexec-root-*/cvmfs"))
    assert not after - before, "the scaffold is removed on exit"


def test_cvmfsexec_shows_slash_cvmfs_in_a_namespace(install, stratum, proxy):
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, timeout=10
    )
    if os.geteuid() != 0 and probe.returncode != 0:
        pytest.skip("no mount namespaces for this user")
    configure(install, proxy, stratum)
    result = run(
        install, "cvmfsexec", REPO, "--", "cat", f"/cvmfs/{REPO}/.cvmfspublished"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == MANIFEST


def test_cvmfsexec_without_namespace(install, stratum, proxy):
    configure(install, proxy, stratum)
    result = run(
        install,
        "cvmfsexec",
        REPO,
        "--",
        "sh",
        "-c",
        'ls "$CVMFS_MOUNT_DIR"; test -n "$CVMFSMOUNT"',
        TNA_CVMFSEXEC_NO_NAMESPACE="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [REPO]
    assert "not /cvmfs" in result.stderr
    nonest = run(
        install, "cvmfsexec", "-N", REPO, "--", "sh", "-c", 'test -z "$CVMFSMOUNT"'
    )
    assert nonest.returncode == 0, nonest.stderr


def test_cvmfsexec_mount_failure_skips_the_command(install, stratum, dead_port):
    configure(install, f"http://127.0.0.1:{dead_port}", stratum)
    result = run(install, "cvmfsexec", REPO, "--", "sh", "-c", "echo RAN")
    assert result.returncode == 16
    assert "RAN" not in result.stdout
    assert f"Failed to mount {REPO}" in result.stderr


def test_cvmfsexec_sigterm_unmounts(install, stratum, proxy):
    configure(install, proxy, stratum)
    proc = subprocess.Popen(
        [str(install / "cvmfsexec"), REPO, "--", "sleep", "30"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: (install / "dist/cvmfs" / REPO / "README").exists())
        time.sleep(0.3)  # let the child reach exec
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()
    assert not (install / "dist/cvmfs" / REPO).exists()


def test_nested_mount_inside_cvmfsexec(install, stratum, proxy):
    configure(install, proxy, stratum)
    Stratum.manifests["/cvmfs/cms.cern.ch/.cvmfspublished"] = MANIFEST.replace(
        b"Natlas.cern.ch", b"Ncms.cern.ch"
    )
    script = '"$CVMFSMOUNT" cms.cern.ch >/dev/null && ls "$CVMFS_MOUNT_DIR"'
    result = run(install, "cvmfsexec", REPO, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["atlas.cern.ch", "cms.cern.ch"]
    assert not (install / "dist/cvmfs/cms.cern.ch").exists(), "nested mounts unmounted"


def test_unprivileged_user_sees_slash_cvmfs(install, stratum, proxy):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to switch to an unprivileged user")
    probe = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "unshare",
            "--user",
            "--map-current-user",
            "--mount",
            "true",
        ],
        capture_output=True,
        timeout=10,
    )
    if probe.returncode != 0:
        pytest.skip("unprivileged user namespaces unavailable")
    configure(install, proxy, stratum)
    shutil.chown(install / "dist", "nobody", "nogroup")
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            str(install / "cvmfsexec"),
            REPO,
            "--",
            "sh",
            "-c",
            f"id -u; cat /cvmfs/{REPO}/README",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(HOME="/"),
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    uid, *rest = result.stdout.splitlines()
    assert uid == "65534"
    assert "cvmfsexec stand-in mount" in "\n".join(rest)
    assert not (install / "dist/cvmfs" / REPO).exists()


def test_cvmfsexec_usage_errors(install, stratum, proxy):
    configure(install, proxy, stratum)
    no_separator = run(install, "cvmfsexec", REPO, "true")
    assert no_separator.returncode == 1 and "Usage: cvmfsexec" in no_separator.stderr
    bad_name = run(install, "cvmfsexec", "../etc", "--", "true")
    assert bad_name.returncode == 2 and "invalid repository name" in bad_name.stderr
    assert run(install, "cvmfsexec", "-v").stdout.strip().endswith("standin")
