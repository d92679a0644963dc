"""The DMZ's VPN server (issue 13): lab CA, certificates, ocpasswd, credentials.

Made fresh at every `lab up` with the real tools a site admin uses (GnuTLS'
certtool, ocserv's ocpasswd), into the lab's state dir: a lab CA, the server
certificate of `dmz` (both its addresses as subjectAltName), a client
certificate for the drone user (certificate login, `enable-auth =
"certificate"`), and the drone user's password, hashed in ocserv's passwd file
and in clear in a 0600 file in the user's home, where a site would tell the
user to keep it. Nothing here starts a process in a namespace or sends a packet.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from . import configs, rcvbuf
from . import layout as L
from .netns import check_call

_PIN_RE = re.compile(r"pin-sha256:[A-Za-z0-9+/]+=*")

CA_TEMPLATE = """cn = "tardis-netadapter lab {name} CA"
organization = "tardis-netadapter lab"
expiration_days = 3650
ca
cert_signing_key
"""

SERVER_TEMPLATE = """cn = "dmz"
organization = "tardis-netadapter lab"
dns_name = "dmz"
ip_address = "{site}"
ip_address = "{public}"
expiration_days = 3650
signing_key
encryption_key
tls_www_server
"""

# ocserv maps the certificate to a user by cert-user-oid (UID, 0.9.2342...1.1)
CLIENT_TEMPLATE = """cn = "{user}"
uid = "{user}"
organization = "tardis-netadapter lab"
expiration_days = 3650
signing_key
tls_www_client
"""


def ca_cert(lab: L.LabLayout) -> Path:
    return lab.vpn_dir / "ca.pem"


def server_cert(lab: L.LabLayout) -> Path:
    return lab.vpn_dir / "server.pem"


def server_key(lab: L.LabLayout) -> Path:
    return lab.vpn_dir / "server.key"


def passwd_file(lab: L.LabLayout) -> Path:
    return lab.vpn_dir / "ocpasswd"


def ocserv_conf(lab: L.LabLayout) -> Path:
    return lab.vpn_dir / "ocserv.conf"


def _certtool(*args: str) -> str:
    return check_call(["certtool", *args])


def _privkey(path: Path) -> None:
    _certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", str(path))
    os.chmod(path, 0o600)


def create(lab: L.LabLayout) -> None:
    """CA, server and client certificates, ocpasswd entry, ocserv.conf.

    The drone user's files go to ~/.tardis-netadapter (0700): vpn.password,
    vpn-client.pem and vpn-client.key, each 0600 and owned by the user, which
    is what the drone script checks before it uses them.
    """
    d = lab.vpn_dir
    d.mkdir(mode=0o700)
    ca_key = d / "ca.key"
    (d / "ca.tmpl").write_text(CA_TEMPLATE.format(name=lab.name))
    (d / "server.tmpl").write_text(
        SERVER_TEMPLATE.format(site=L.DMZ_SITE, public=L.DMZ_PUBLIC)
    )
    (d / "client.tmpl").write_text(CLIENT_TEMPLATE.format(user=lab.drone_user))
    _privkey(ca_key)
    _certtool(
        "--generate-self-signed",
        "--load-privkey",
        str(ca_key),
        "--template",
        str(d / "ca.tmpl"),
        "--outfile",
        str(ca_cert(lab)),
    )
    _privkey(server_key(lab))
    _sign(lab, server_key(lab), d / "server.tmpl", server_cert(lab))
    client_key = d / "client.key"
    _privkey(client_key)
    _sign(lab, client_key, d / "client.tmpl", d / "client.pem")

    password = secrets.token_urlsafe(18)
    check_call(
        ["ocpasswd", "-c", str(passwd_file(lab)), lab.drone_user],
        input=f"{password}\n{password}\n",
    )
    os.chmod(passwd_file(lab), 0o600)
    ocserv_conf(lab).write_text(configs.ocserv_conf(lab))
    rcvbuf.build(lab)  # DTLS's receive buffer on dmz (none without a compiler)

    user = lab.drone_user
    lab.vpn_user_dir.mkdir(mode=0o700)
    shutil.chown(lab.vpn_user_dir, user, user)
    _user_file(lab.vpn_password_file, password + "\n", user)
    _user_file(lab.vpn_client_cert, (d / "client.pem").read_text(), user)
    _user_file(lab.vpn_client_key, client_key.read_text(), user)
    client_key.unlink()  # the user's copy is the only one


def _sign(lab: L.LabLayout, key: Path, template: Path, out: Path) -> None:
    _certtool(
        "--generate-certificate",
        "--load-privkey",
        str(key),
        "--load-ca-certificate",
        str(ca_cert(lab)),
        "--load-ca-privkey",
        str(lab.vpn_dir / "ca.key"),
        "--template",
        str(template),
        "--outfile",
        str(out),
    )


def _user_file(path: Path, text: str, user: str) -> None:
    """A 0600 file owned by `user`, never readable by anyone else in between."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    shutil.chown(path, user, user)


def pin(lab: L.LabLayout) -> str:
    """`pin-sha256:<base64 sha256 of the SubjectPublicKeyInfo>` of the server.

    certtool prints it in exactly the form `openconnect --servercert` takes.
    """
    info = _certtool("--certificate-info", "--infile", str(server_cert(lab)))
    match = _PIN_RE.search(info)
    if match is None:
        raise RuntimeError(f"certtool printed no pin-sha256 for {server_cert(lab)}")
    return match.group(0)
