"""A fake ``ssh`` for local drone runs (tests/unit/test_render_ports.py).

Does what the drone needs of ``ssh -N -F CONFIG -L ... -D ... HOST``: after
FAKE_SSH_DELAY seconds (authentication) it binds every -L and -D port on
127.0.0.1 in order, and like ExitOnForwardFailure exits 255 if one is taken.
-D speaks SOCKS5 (CONNECT only; every name means 127.0.0.1), -L relays to its
target. ``ssh -Q ...`` fails, so the drone picks no ciphers. Events are
appended to FAKE_SSH_LOG: "start -D P -L Q", "bound", "socks P HOST:PORT".
The test writes this file as the script itself, behind a #! line.
"""

import contextlib
import os
import signal
import socket
import struct
import sys
import threading
import time


def log(line: str) -> None:
    path = os.environ.get("FAKE_SSH_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {line}\n")


def relay(a: socket.socket, b: socket.socket) -> None:
    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=pump, args=(b, a), daemon=True).start()
    pump(a, b)


def recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def socks5(conn: socket.socket, listen_port: int) -> None:
    try:
        _, methods = recv_exact(conn, 2)
        recv_exact(conn, methods)
        conn.sendall(b"\x05\x00")
        _, command, _, kind = recv_exact(conn, 4)
        if kind == 1:
            host = socket.inet_ntoa(recv_exact(conn, 4))
        elif kind == 3:
            host = recv_exact(conn, recv_exact(conn, 1)[0]).decode()
        else:
            raise OSError("address type not supported")
        (port,) = struct.unpack("!H", recv_exact(conn, 2))
        log(f"socks {listen_port} {host}:{port}")
        target = socket.create_connection(
            (host if kind == 1 else "127.0.0.1", port), timeout=5
        )
        target.settimeout(None)
        conn.sendall(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")
        relay(conn, target)
    except OSError:
        conn.close()


def forward(conn: socket.socket, host: str, port: int) -> None:
    try:
        relay(conn, socket.create_connection((host, port), timeout=5))
    except OSError:
        conn.close()


def serve(listener: socket.socket, handler, *args) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()


def main(argv: list[str]) -> int:
    if "-Q" in argv:
        return 1
    locals_, dynamics = [], []
    index = 0
    while index < len(argv):
        option = argv[index]
        if option in ("-L", "-D", "-F", "-o", "-p", "-l", "-i", "-J"):
            value = argv[index + 1]
            if option == "-L":
                _, listen, rest = value.split(":", 2)
                host, _, port = rest.rpartition(":")
                locals_.append((int(listen), host.strip("[]"), int(port)))
            elif option == "-D":
                dynamics.append(int(value.rpartition(":")[2]))
            index += 2
        else:
            index += 1
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    log(
        "start"
        + "".join(f" -D {p}" for p in dynamics)
        + "".join(f" -L {p}" for p, _, _ in locals_)
    )
    time.sleep(float(os.environ.get("FAKE_SSH_DELAY", "0")))
    servers = []
    for port, handler, args in [(p, forward, (h, t)) for p, h, t in locals_] + [
        (p, socks5, (p,)) for p in dynamics
    ]:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError as error:
            print(f"bind [127.0.0.1]:{port}: {error.strerror}", file=sys.stderr)
            print("Could not request local forwarding.", file=sys.stderr)
            log(f"failed {port}")
            return 255
        listener.listen(16)
        servers.append((listener, handler, args))
    log("bound")
    for listener, handler, args in servers:
        threading.Thread(
            target=serve, args=(listener, handler, *args), daemon=True
        ).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
