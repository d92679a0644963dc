"""The docs name only commands and options the CLI has, and ``--help`` reads as plain text.

Every ``tardis-netadapter SUBCOMMAND [--option ...]`` in README.md and
docs/*.md (in a code block or an inline code span), and every inline span
that starts with a subcommand (``check --probe``), is walked through the real
argparse parsers of :func:`tardis_netadapter.cli.build_parser`: a renamed or
removed command or option fails here instead of in an operator's terminal.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tardis_netadapter.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

#: what the drone script logs starts with "tardis-netadapter drone <uuid>:"
#: (drone_scripts/lib/common.sh): a log line quoted in the docs, not a command
LOG_PREFIX = "drone "
#: options the docs may name before their command lands (a branch landing in
#: parts); keep it empty on main
PENDING: set[tuple[str, str]] = set()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions for name in action.option_strings}


def code_texts(text: str) -> Iterator[tuple[str, bool]]:
    """(code, inline) for each line of a fenced or indented code block (False)
    and each inline code span (True)."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            # a shell comment explains, it does not run
            yield re.sub(r"(^|\s+)#.*", "", line), False
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield span, True


def invocations(text: str, commands: set[str]) -> Iterator[list[str]]:
    """The words after ``tardis-netadapter`` in code, and those of an inline
    span that starts with a subcommand (``check --probe``)."""
    for code, inline in code_texts(text):
        for match in re.finditer(r"(?<![\w/.-])tardis-netadapter +(.*)", code):
            rest = match.group(1)
            if not rest.startswith(LOG_PREFIX):
                yield _words(rest)
        first = code.split(" ", 1)[0]
        if inline and first in commands and "tardis-netadapter" not in code:
            yield _words(code)


def _words(rest: str) -> list[str]:
    words = []
    for word in rest.split():
        if word in ("|", ">", ";", "&&", "--") or word.startswith((")", ">")):
            break
        words.append(word.strip("[]()\"'.,:"))
    return [word for word in words if word]


def problems_of(words: list[str], root: argparse.ArgumentParser) -> list[str]:
    """What in one documented invocation the parsers do not have."""
    chain, parser, problems, positional = [root], root, [], False
    command = ""
    for word in words:
        if word.startswith("-"):
            option = re.match(r"-*[\w-]*", word).group()  # --dir)/x: --dir
            known = set().union(*(options(p) for p in chain))
            if option not in known and (command, option) not in PENDING:
                problems.append(f"{' '.join(words)}: no option {option}")
            continue
        choices = subparsers(parser)
        if choices and not positional:
            alternatives = word.split("|")
            missing = [a for a in alternatives if a not in choices]
            if missing:
                problems.append(f"{' '.join(words)}: no command {missing[0]!r}")
                return problems
            command = command or alternatives[0]
            parser = choices[alternatives[0]]
            chain.append(parser)
            continue
        positional = True
    return problems


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_the_walk_finds_a_removed_option_and_command(parser) -> None:
    """The check itself can fail: a made-up option and command are found."""
    assert problems_of(["check", "--probe"], parser) == []
    assert problems_of(["check", "--prob"], parser) == [
        "check --prob: no option --prob"
    ]
    assert problems_of(["chek", "x.yml"], parser) == ["chek x.yml: no command 'chek'"]
    text = "```\ntardis-netadapter render C --site S --machine-typ M  # x\n```\n"
    words = list(invocations(text, set(subparsers(parser))))
    assert words == [["render", "C", "--site", "S", "--machine-typ", "M"]]
    assert problems_of(words[0], parser) == [
        "render C --site S --machine-typ M: no option --machine-typ"
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_documented_command_and_option_exists(page: Path, parser) -> None:
    commands = set(subparsers(parser))
    found = [
        problem
        for words in invocations(page.read_text(), commands)
        for problem in problems_of(words, parser)
    ]
    assert not found, found


def test_the_docs_name_the_main_commands(parser) -> None:
    """The walk reads what it should: the operator's commands are all met."""
    met = {
        words[0]
        for page in PAGES
        for words in invocations(page.read_text(), set(subparsers(parser)))
        if words
    }
    assert {"check", "render", "status", "examples", "site-nat"} <= met, met


def _all_parsers(
    parser: argparse.ArgumentParser, name: str = "tardis-netadapter"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for sub, child in subparsers(parser).items():
        yield from _all_parsers(child, f"{name} {sub}")


def test_help_shows_no_markup(parser) -> None:
    """Docstrings are written for Sphinx (``x``); --help is read in a terminal."""
    helps = dict(_all_parsers(parser))
    assert {"tardis-netadapter check", "tardis-netadapter status"} <= set(helps)
    marked = [name for name, p in helps.items() if "``" in p.format_help()]
    assert not marked, marked
