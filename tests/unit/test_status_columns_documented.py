"""docs/troubleshooting.md points only to columns ``status`` really has (issue 17).

It once sent operators to a ``RESTARTS`` column that did not exist. Every
backticked all-capitals word in it names a column of the table or of the
wide table; where the column is only in ``--wide``, the text must say so.
"""

from __future__ import annotations

import re
from pathlib import Path

from tardis_netadapter.connectivity.report import COLUMNS, WIDE_COLUMNS

DOCS = Path(__file__).resolve().parents[2] / "docs"
COLUMN = re.compile(r"`([A-Z][A-Z ]*[A-Z])`")


def test_every_column_troubleshooting_names_exists():
    text = (DOCS / "troubleshooting.md").read_text()
    narrow = {title for _, title in COLUMNS}
    wide = {title for _, title in WIDE_COLUMNS}
    named = set(COLUMN.findall(text))
    assert named, "the pattern finds the columns the page names"
    assert named <= narrow | wide, named - narrow - wide
    for title in sorted(named - narrow):  # only in the wide table: say --wide
        for line in text.splitlines():
            if f"`{title}`" in line:
                assert "--wide" in line, (title, line)


def test_the_monitoring_page_shows_the_wide_header_as_printed():
    text = (DOCS / "monitoring.md").read_text()
    header = "  ".join(title for _, title in WIDE_COLUMNS)
    squeezed = [" ".join(line.split()) for line in text.splitlines()]
    assert " ".join(header.split()) in squeezed
