"""The privacy policy the hub serves at ``/privacy``: the operator's text (``data/privacy-policy.txt``,
plain lines as published) read once into headings, summaries, paragraphs and lists, so the page
is readable HTML rather than a dump of the file.

The text's own layout is the grammar: a line holding only ``-`` starts a section, whose first line
is its heading; ``In short`` and the line after it are the section's summary; lines starting
``- `` are list items; a short line that does not end a sentence (and holds no number or path) is
a subheading; anything else is a paragraph."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from aiohttp import web

from identity import i18n
from identity.pages.common import render

POLICY_FILE = "privacy-policy.txt"
#: A subheading is shorter than this and does not end a sentence.
HEADING_LENGTH = 90
SENTENCE_ENDS = (".", ":", ",", ";", "!")


@dataclass(frozen=True)
class Block:
    kind: str  # "section" (a heading), "heading", "summary", "paragraph", "list"
    text: str = ""
    items: tuple[str, ...] = ()
    anchor: str = ""


@dataclass
class _Reader:
    blocks: list[Block] = field(default_factory=list)
    items: list[str] = field(default_factory=list)

    def flush(self) -> None:
        if self.items:
            self.blocks.append(Block("list", items=tuple(self.items)))
            self.items = []

    def add(self, block: Block) -> None:
        self.flush()
        self.blocks.append(block)


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _is_heading(line: str) -> bool:
    short = len(line) < HEADING_LENGTH and not line.endswith(SENTENCE_ENDS)
    return short and not line.startswith("/") and not any(ch.isdigit() for ch in line)


def parse(text: str) -> tuple[Block, ...]:
    """The policy's blocks, in order (a pure function of the text)."""
    reader = _Reader()
    lines = [line.strip() for line in text.splitlines()]
    starts_section = False
    in_short = False
    for line in lines:
        if not line:
            continue
        if line == "-":
            reader.flush()
            starts_section = True
            continue
        if starts_section:
            reader.add(Block("section", line, anchor=anchor(line)))
            starts_section = False
        elif line == "In short":
            in_short = True
        elif in_short:
            reader.add(Block("summary", line))
            in_short = False
        elif line.startswith("- "):
            reader.items.append(line[2:].lstrip("• ").strip())
        elif _is_heading(line):
            reader.add(Block("heading", line))
        else:
            reader.add(Block("paragraph", line))
    reader.flush()
    return tuple(reader.blocks)


@lru_cache(maxsize=1)
def policy() -> tuple[Block, ...]:
    return parse(resources.files("identity.pages").joinpath("data", POLICY_FILE).read_text(encoding="utf-8"))


#: The language the operator wrote the policy's text in (it is shown as written, whatever the
#: page's language; the article says which, for screen readers and hyphenation).
POLICY_LANGUAGE = "en"


async def privacy_page(request: web.Request) -> web.Response:
    blocks = policy()
    contents = [b for b in blocks if b.kind == "section"]
    written_in = POLICY_LANGUAGE if POLICY_LANGUAGE != i18n.current() else None
    return render(request, "privacy_policy.html", {"blocks": blocks, "contents": contents, "policy_language": written_in})
