"""Tag-list parsing shared by DKIM (RFC 6376 3.2) and DMARC (RFC 7489 6.4) records."""

from __future__ import annotations

import re

RE_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class TagSyntaxError(ValueError):
    """A tag list that does not parse; the message names the offending part."""


def parse_tags(text: str) -> list[tuple[str, str]]:
    """``"v=DKIM1; k=rsa; p=MIG..."`` -> [("v", "DKIM1"), ("k", "rsa"), ("p", "MIG...")].

    Whitespace around tags and values is dropped (folding whitespace inside values too, as
    base64 keys are often split); a trailing ``;`` is allowed; duplicate tags are an error.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.split(";"):
        part = raw.strip()
        if not part:
            continue
        if "=" not in part:
            raise TagSyntaxError(f"'{part}' is not tag=value")
        tag, value = (x.strip() for x in part.split("=", 1))
        if not RE_TAG.match(tag):
            raise TagSyntaxError(f"invalid tag name '{tag}'")
        if tag.lower() in seen:
            raise TagSyntaxError(f"tag '{tag}' appears twice")
        seen.add(tag.lower())
        pairs.append((tag, value))
    return pairs


def parse_tag_list(text: str) -> tuple[list[tuple[str, str]], dict[str, str], list[str]]:
    """A record's tag list read for validation: (pairs, the tags by lower-case name, errors); a
    list that does not parse has no tags and its syntax error as the one error."""
    try:
        pairs = parse_tags(text)
    except TagSyntaxError as exc:
        return [], {}, [f"syntax error: {exc}"]
    return pairs, {tag.lower(): value for tag, value in pairs}, []
