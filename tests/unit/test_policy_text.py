"""The privacy policy's text read into blocks (identity.pages.policy.parse): a pure function."""

from __future__ import annotations

from importlib import resources

from identity.pages.policy import Block, parse, policy

TEXT = """Privacy Policy
We take care.
-
Information that we collect
In short
What do we collect?
Information that you provide us
For example:
- Your name
- • Your address
A closing paragraph.
-
Contact us
1. By email:
/support/form
"""


def test_sections_summaries_subheadings_lists_and_paragraphs() -> None:
    assert parse(TEXT) == (
        Block("heading", "Privacy Policy"),
        Block("paragraph", "We take care."),
        Block("section", "Information that we collect", anchor="information-that-we-collect"),
        Block("summary", "What do we collect?"),
        Block("heading", "Information that you provide us"),
        Block("paragraph", "For example:"),
        Block("list", items=("Your name", "Your address")),
        Block("paragraph", "A closing paragraph."),
        Block("section", "Contact us", anchor="contact-us"),
        Block("paragraph", "1. By email:"),
        Block("paragraph", "/support/form"),
    )


def test_the_served_policy_has_every_section_and_loses_no_line() -> None:
    blocks = policy()
    sections = [b.text for b in blocks if b.kind == "section"]
    assert sections[0] == "Information that we collect" and sections[-1] == "Contact us"
    assert "Linked Sony accounts (“One Sign In”)" in sections
    assert len([b for b in blocks if b.kind == "summary"]) >= 10
    # Every non-structural line of the file is somewhere in a block.
    text = resources.files("identity.pages").joinpath("data", "privacy-policy.txt").read_text(encoding="utf-8")
    shown = {b.text for b in blocks} | {item for b in blocks for item in b.items}
    for line in (line.strip() for line in text.splitlines()):
        if line and line not in ("-", "In short"):
            assert line in shown or line[2:].lstrip("• ").strip() in shown, line
