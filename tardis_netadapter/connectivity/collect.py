"""Bulk collection of a site's heartbeats: one shell command, appended to squeue.

The adapter reaches a site through one executor (ssh) connection; a command per
drone would not scale past a few hundred drones. So the heartbeats of all the
site's drones are printed by ONE command that rides in the same executor call as
the poller's ``squeue``, behind a sentinel line, and are split off here.

The command also prints the login node's clock, so heartbeat ages compare worker
clocks with a clock of the same site (not the adapter's), and an end marker, so a
collection cut short (timeout, dropped connection) is recognised as incomplete
and does not make drones look silent.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

from ..paths import shell_path
from .heartbeat import UUID_PATTERN, Heartbeat, parse_records

logger = logging.getLogger("cobald.runtime.tardis_netadapter.connectivity")

BEGIN = "@@tna-heartbeats@@"
END = "@@tna-heartbeats-end@@"

#: heartbeat files larger than this are not read (a stray big file must not
#: flood the adapter); a real record is well below 4 KiB.
MAX_RECORD_BYTES = 64 * 1024


def collection_command(heartbeat_dir: str, timeout: int = 30) -> str:
    """A POSIX-sh command printing BEGIN + site clock, every record, then END.

    ``find -exec cat {} +`` batches file names, so 10,000 drones do not hit the
    argument-list limit; ``awk 1`` ends every file with a newline so a record
    without one cannot glue onto the next; ``tr`` drops non-ASCII bytes so the
    executor's UTF-8 decoding cannot fail on a garbage file; ``timeout`` keeps a
    hung shared filesystem from hanging the adapter's poll. The command always
    exits 0.
    """
    directory = shell_path(heartbeat_dir)
    size = f"-{MAX_RECORD_BYTES // 1024}k"
    return (
        f"printf '%s %s\\n' {shlex.quote(BEGIN)} \"$(date +%s)\"; "
        f"timeout -k 5 {int(timeout)} find {directory} -maxdepth 1 -type f "
        f"-name '*.json' -size {size} -exec awk 1 {{}} + 2>/dev/null "
        f"| LC_ALL=C tr -cd '\\012\\040-\\176'; "
        f"printf '%s\\n' {shlex.quote(END)}"
    )


def combine_command(batch_command: str, heartbeat_dir: str, timeout: int = 30) -> str:
    """``batch_command`` then the collection, keeping the batch command's exit code.

    The batch command (the poller's squeue) runs first in a subshell so a
    failing squeue still reports its own exit status to the executor (TARDIS
    raises CommandExecutionFailure on it, carrying stdout for split_output).
    """
    return (
        f"( {batch_command} ); tna_rc=$?; "
        f"{collection_command(heartbeat_dir, timeout)}; exit $tna_rc"
    )


@dataclass(frozen=True)
class Collection:
    """The heartbeats seen in one collection, with the site's clock at reading time."""

    records: dict[str, Heartbeat] = field(default_factory=dict)
    site_time: Optional[float] = None
    complete: bool = False


def parse_collection(text: str) -> Collection:
    """Parse the part after BEGIN (the BEGIN line itself included). Never raises."""
    lines = text.splitlines()
    site_time: Optional[float] = None
    if lines and lines[0].startswith(BEGIN):
        try:
            site_time = float(lines[0][len(BEGIN) :].strip())
        except ValueError:
            logger.debug("heartbeat collection without a site clock: %.80r", lines[0])
        lines = lines[1:]
    complete = False
    if lines and lines[-1].strip() == END:
        complete, lines = True, lines[:-1]
    return Collection(parse_records("\n".join(lines)), site_time, complete)


def split_output(stdout: str) -> tuple[str, Collection]:
    """Split combined output into (batch command's stdout, parsed heartbeats).

    Without a BEGIN line (the collection never ran) the whole output belongs to
    the batch command and the Collection is empty and incomplete.
    """
    if stdout.startswith(BEGIN):
        return "", parse_collection(stdout)
    head, marker, tail = stdout.partition("\n" + BEGIN)
    if not marker:
        return stdout, Collection()
    return head + "\n", parse_collection(BEGIN + tail)


def cleanup_command(heartbeat_dir: str, uuids: Iterable[str]) -> Optional[str]:
    """``rm -f`` of the heartbeat files of drones that are gone; None if nothing to do.

    Uuids that could not be a file name of ours (path separators, leading dots)
    are skipped with a warning rather than passed to ``rm``.
    """
    directory = shell_path(heartbeat_dir)
    names = []
    for uuid in sorted(set(uuids)):
        if not UUID_PATTERN.fullmatch(uuid):
            logger.warning("not removing heartbeat of odd drone uuid %.80r", uuid)
            continue
        names.append(directory + "/" + shlex.quote(uuid + ".json"))
    if not names:
        return None
    return "rm -f -- " + " ".join(names)


#: heartbeat files untouched this long belong to no live drone (walltime is shorter)
PRUNE_AFTER_DAYS = 7


#: names of heartbeat records: the watchdog writes ``<drone uuid>.json``, and
#: TARDIS makes the uuid ``<site name in lower case>-<10 hex digits>`` (site
#: names are validated as ``[A-Za-z0-9][A-Za-z0-9_.-]*``). As find patterns:
HEARTBEAT_NAME = "[a-z0-9]*-" + "[0-9a-f]" * 10 + ".json"
HEARTBEAT_NAME_EXCLUDE = "*[!a-z0-9_.-]*"
#: the first bytes of every record the watchdog writes (``{"v":1,"uuid":...``)
RECORD_START = '{"v":'

# for each file find hands over: delete it only if it starts like a record
_DELETE_RECORDS = (
    'for f do l=; IFS= read -r l < "$f"; '
    f'case $l in {shlex.quote(RECORD_START)}*) rm -f -- "$f";; esac; done'
)


def prune_command(
    heartbeat_dir: str, days: int = PRUNE_AFTER_DAYS, timeout: int = 30
) -> str:
    """Remove heartbeat records untouched for ``days``: a net under missed cleanups.

    Only files whose name is a drone record's (``HEARTBEAT_NAME``) AND whose
    content starts like one (``RECORD_START``) are removed, so an old
    ``notes.json`` in a badly chosen directory survives. The directory word
    starts with ``/`` (``shell_path``), so ``find`` cannot take it for an
    option. Bounded by ``timeout`` like the collection, so a hung shared
    filesystem cannot hang the adapter's poll; always exits 0.
    """
    return (
        f"timeout -k 5 {int(timeout)} find {shell_path(heartbeat_dir)} -maxdepth 1 "
        f"-type f -name {shlex.quote(HEARTBEAT_NAME)} "
        f"! -name {shlex.quote(HEARTBEAT_NAME_EXCLUDE)} "
        f"-size -{MAX_RECORD_BYTES // 1024}k -mtime +{int(days)} "
        f"-exec sh -c {shlex.quote(_DELETE_RECORDS)} tna-prune {{}} + "
        "2>/dev/null; true"
    )


class HeartbeatStore:
    """The newest record per drone across cycles, and the site clock of the last
    complete collection.

    An incomplete collection (timeout, truncated output) only adds records; it
    never makes a drone look silent. And while collections keep failing, the
    clock used for verdicts (``now``) stands still, so a broken shared
    filesystem on the login node cannot get a whole site declared lost.
    """

    def __init__(self) -> None:
        self.records: dict[str, Heartbeat] = {}
        self.now: Optional[float] = None

    def update(self, collection: Collection) -> None:
        """Merge one collection in."""
        for uuid, record in collection.records.items():
            known = self.records.get(uuid)
            if known is None or (record.time, record.seq) >= (known.time, known.seq):
                self.records[uuid] = record
        if collection.complete and collection.site_time is not None:
            self.now = max(self.now or 0.0, collection.site_time)

    def get(self, uuid: str) -> Optional[Heartbeat]:
        return self.records.get(uuid)

    def forget(self, uuids: Iterable[str]) -> None:
        """Drop drones that are gone (after their files are removed)."""
        for uuid in uuids:
            self.records.pop(uuid, None)


@dataclass(frozen=True)
class HeartbeatProbe:
    """The collection as a ``batch.poller.Probe``: rides in the SitePoller's call.

    The poller prints its own marker before ``command`` and hands the lines
    after it to ``parse``; the result lands in ``snapshot.extras[name]``.

    ``gone`` holds drones whose jobs ended by themselves (walltime, a failed
    payload): their files are removed in the next call, so they do not wait
    for the week-long prune, at no extra executor call.
    """

    heartbeat_dir: str
    timeout: int = 30
    name: str = "heartbeats"
    gone: set[str] = field(default_factory=set, compare=False)

    @property
    def command(self) -> str:
        """The next call's collection; takes the ``gone`` drones' cleanup with it."""
        # records of drones that ended without the adapter's cleanup (killed at
        # walltime, cut off while being cancelled) are pruned on the way
        cleanup = cleanup_command(self.heartbeat_dir, self.gone)
        self.gone.clear()
        return (
            (f"{cleanup}; " if cleanup else "")
            + f"{prune_command(self.heartbeat_dir, PRUNE_AFTER_DAYS, self.timeout)}; "
            f"{collection_command(self.heartbeat_dir, self.timeout)}"
        )

    def parse(self, text: str) -> Collection:
        return parse_collection(text)
