"""The lab's users and ssh trust: host keys, user keys, known_hosts.

The drone user and a second user exist once on the machine and are shared by
all worker namespaces (the filesystem is the machine's, as on a cluster with a
shared home). Keys are authorized through root-owned files named by sshd's
`AuthorizedKeysFile`, so a user cannot widen their own access.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from . import layout as L
from .netns import LabCommandError

HOST_KEYS = ("login_host_ed25519", "login2_host_ed25519", "gateway_host_ed25519")


def _write(path: Path, text: str, mode: int, owner: str | None = None) -> None:
    path.write_text(text)
    os.chmod(path, mode)
    if owner is not None:
        shutil.chown(path, owner, owner)


def _keygen_argv(path: Path, comment: str) -> list[str]:
    return [
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        comment,
        "-f",
        str(path),
    ]


def user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def create(lab: L.LabLayout) -> None:
    """Users, their homes and keys, host keys, authorized keys, known_hosts."""
    ssh_dir = lab.ssh_dir
    (ssh_dir / "authorized").mkdir(parents=True, mode=0o755)
    (lab.state_dir / "home").mkdir(mode=0o755)
    user_keys = {user: ssh_dir / f"{user}_ed25519" for user in lab.users}
    jobs = [
        _keygen_argv(ssh_dir / name, f"{lab.name} {name}") for name in HOST_KEYS
    ] + [_keygen_argv(lab.control_key, f"{lab.name} control->login")]
    jobs += [_keygen_argv(key, f"{user}@{lab.name}") for user, key in user_keys.items()]
    keygens = [subprocess.Popen(argv) for argv in jobs]
    for user in lab.users:
        _add_user(lab, user)
    if any(proc.wait() != 0 for proc in keygens):
        raise RuntimeError("ssh-keygen failed")

    known_hosts = known_hosts_text(lab)
    _write(lab.known_hosts, known_hosts, 0o644)
    client_config = ssh_client_config()
    for user, key in user_keys.items():
        dot_ssh = lab.home(user) / ".ssh"
        dot_ssh.mkdir(mode=0o700)
        shutil.chown(dot_ssh, user, user)
        shutil.move(key, dot_ssh / "id_ed25519")
        shutil.move(key.with_suffix(".pub"), dot_ssh / "id_ed25519.pub")
        for name in ("id_ed25519", "id_ed25519.pub"):
            shutil.chown(dot_ssh / name, user, user)
        _write(dot_ssh / "known_hosts", known_hosts, 0o644, user)
        _write(dot_ssh / "config", client_config, 0o600, user)
        authorized = [(dot_ssh / "id_ed25519.pub").read_text()]
        if user == lab.drone_user:
            authorized.append(lab.control_key.with_suffix(".pub").read_text())
        _write(ssh_dir / "authorized" / user, "".join(authorized), 0o644)


#: useradd/userdel refuse at once while another one holds /etc/passwd's
#: lock (two labs set up at the same time, as parallel test workers do):
#: try again for this long
ACCOUNT_LOCK_WAIT = 10.0


def _account_command(argv: list[str], check: bool = True) -> None:
    """useradd/userdel, retried while another process holds the lock."""
    deadline = time.monotonic() + ACCOUNT_LOCK_WAIT
    while True:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        locked = "lock" in (result.stderr + result.stdout).lower()
        if result.returncode == 0 or not locked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if check and result.returncode != 0:
        raise LabCommandError(
            f"{' '.join(argv)} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )


def _add_user(lab: L.LabLayout, user: str) -> None:
    home = lab.home(user)
    _account_command(
        [
            "useradd",
            "--home-dir",
            str(home),
            "--no-create-home",
            "--shell",
            "/bin/bash",
            "--user-group",
            # "*": no password, yet not "locked" (sshd without PAM refuses
            # locked accounts even for key logins)
            "--password",
            "*",
            "--comment",
            f"tardis-netadapter lab {lab.name}",
            user,
        ]
    )
    home.mkdir(mode=0o700)
    shutil.chown(home, user, user)


def known_hosts_text(lab: L.LabLayout) -> str:
    """Host keys of login and login2 (both addresses) and of the gateway on 443."""
    login_key = _public_key(lab.ssh_dir / "login_host_ed25519.pub")
    login2_key = _public_key(lab.ssh_dir / "login2_host_ed25519.pub")
    gateway_key = _public_key(lab.ssh_dir / "gateway_host_ed25519.pub")
    login_names = ",".join(["login", L.LOGIN_SITE, L.LOGIN_PUBLIC])
    login2_names = ",".join(["login2", L.LOGIN2_SITE, L.LOGIN2_PUBLIC])
    gateway_names = ",".join(
        f"[{name}]:{L.HTTPS_PORT}" for name in ("gateway", L.OUTSIDE_GATEWAY)
    )
    return (
        f"{login_names} {login_key}\n{login2_names} {login2_key}\n"
        f"{gateway_names} {gateway_key}\n"
    )


def _public_key(path: Path) -> str:
    key_type, key = path.read_text().split()[:2]
    return f"{key_type} {key}"


def ssh_client_config() -> str:
    """~/.ssh/config of the lab users: short names as a site's users would have.

    `login` (`login2`) is the login node's site-side address (what a job on a worker
    uses); from control, connect to the public address explicitly.
    """
    return f"""Host login
    HostName {L.LOGIN_SITE}
Host login2
    HostName {L.LOGIN2_SITE}
Host gateway
    HostName {L.OUTSIDE_GATEWAY}
    Port {L.HTTPS_PORT}
Host *
    StrictHostKeyChecking yes
    IdentityFile ~/.ssh/id_ed25519
    IdentitiesOnly yes
"""


def remove(name: str) -> list[str]:
    """Delete this lab's users (their homes go with the state dir)."""
    removed = []
    for user in (f"{name}drone", f"{name}other"):
        if user_exists(user):
            _account_command(["userdel", "-f", user], check=False)
            removed.append(user)
    return removed
