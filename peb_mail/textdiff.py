"""Word-level differences between a student's email and the example answer."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from markupsafe import Markup, escape

# Words and the spaces after them, so a rebuilt text keeps its line breaks.
_TOKEN_RE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Segment:
    """A run of text that is the same, removed or added."""

    kind: str  # "same", "removed" or "added"
    text: str


def word_diff(original: str, revised: str) -> list[Segment]:
    """Return the segments that turn ``original`` into ``revised``, word by word."""
    before = _TOKEN_RE.findall(original.strip())
    after = _TOKEN_RE.findall(revised.strip())
    # Compare words without their trailing spaces, so a changed line break
    # alone does not count as a change.
    matcher = difflib.SequenceMatcher(
        a=[token.strip() for token in before],
        b=[token.strip() for token in after],
        autojunk=False,
    )
    segments: list[Segment] = []
    for tag, a_start, a_end, b_start, b_end in matcher.get_opcodes():
        if tag == "equal":
            segments.append(Segment("same", "".join(after[b_start:b_end])))
            continue
        if tag in ("delete", "replace"):
            segments.append(Segment("removed", "".join(before[a_start:a_end])))
        if tag in ("insert", "replace"):
            segments.append(Segment("added", "".join(after[b_start:b_end])))
    return segments


def changed_share(segments: list[Segment]) -> float:
    """Return the share of characters that were removed or added (0 to 1)."""
    total = sum(len(segment.text) for segment in segments) or 1
    return sum(len(s.text) for s in segments if s.kind != "same") / total


def diff_text(segments: list[Segment]) -> str:
    """Render segments as plain text: [-removed-] and {+added+}."""
    parts = []
    for segment in segments:
        if segment.kind == "same":
            parts.append(segment.text)
            continue
        stripped = segment.text.rstrip()
        trailing = segment.text[len(stripped) :]
        mark = ("[-", "-]") if segment.kind == "removed" else ("{+", "+}")
        parts.append(f"{mark[0]}{stripped}{mark[1]}{trailing}")
    return "".join(parts)


def diff_html(segments: list[Segment]) -> Markup:
    """Render segments as escaped HTML with <del> and <ins>, line breaks kept."""
    styles = {
        "removed": '<del style="background: #fdd; color: #900;">{}</del>',
        "added": '<ins style="background: #dfd; color: #060; text-decoration: none;">{}</ins>',
    }
    html = []
    for segment in segments:
        text = str(escape(segment.text)).replace("\n", "<br>")
        html.append(
            styles[segment.kind].format(text) if segment.kind in styles else text
        )
    return Markup("".join(html))
