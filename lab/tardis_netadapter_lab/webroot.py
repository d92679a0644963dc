"""Content of the outside HTTP server: files of known size and CVMFS manifests.

File content is a pure function of the byte count, so a test can check what
it downloaded without the server publishing checksums.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

MIB = 1 << 20
FILES = {"1M.bin": MIB, "10M.bin": 10 * MIB, "100M.bin": 100 * MIB}
CVMFS_REPOS = {"cms.cern.ch": 4217, "alice.cern.ch": 1093, "lab.cern.ch": 7}
MANIFEST_TIMESTAMP = 1700000000


@lru_cache(maxsize=1)
def _block() -> bytes:
    """One MiB of deterministic, incompressible-looking bytes."""
    return b"".join(
        hashlib.sha256(f"tardis-netadapter lab {i}".encode()).digest()
        for i in range(MIB // 32)
    )


def file_content(size: int) -> bytes:
    """The exact bytes served for a file of `size` bytes."""
    block = _block()
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


def expected_sha256(name: str) -> str:
    """SHA-256 of /files/NAME as served, computed without reading the server."""
    digest = hashlib.sha256()
    whole, rest = divmod(FILES[name], MIB)
    for _ in range(whole):
        digest.update(_block())
    digest.update(_block()[:rest])
    return digest.hexdigest()


def manifest(repo: str, revision: int) -> str:
    """A .cvmfspublished in the real field layout (unsigned: a stand-in)."""
    root_hash = hashlib.sha1(f"{repo} {revision}".encode()).hexdigest()
    body = (
        f"C{root_hash}\nB4096\nR{hashlib.md5(b'').hexdigest()}\nD240\n"
        f"S{revision}\nGno\nAno\nN{repo}\nT{MANIFEST_TIMESTAMP}\n"
    )
    return body + "--\n" + hashlib.sha1(body.encode()).hexdigest() + "\n"


def build(root: Path) -> None:
    """Write the document root served on outside:80."""
    files = root / "files"
    files.mkdir(parents=True, mode=0o755)
    for name, size in FILES.items():
        with open(files / name, "wb") as out:
            whole, rest = divmod(size, MIB)
            for _ in range(whole):
                out.write(_block())
            out.write(_block()[:rest])
    (files / "hello.txt").write_text("hello from outside\n")
    for repo, revision in CVMFS_REPOS.items():
        repo_dir = root / "cvmfs" / repo
        repo_dir.mkdir(parents=True, mode=0o755)
        (repo_dir / ".cvmfspublished").write_text(manifest(repo, revision))
