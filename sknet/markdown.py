"""Markdown from data: every value we did not write ourselves (a URI, a version, a message, a metric) goes through
one of these before it lands in Markdown a person reads (`MODEL_CARD.md`, the `sknet-run-summary` and
`sknet-model-card` artifacts).

- `text`: inline text. `& < >` become HTML entities, Markdown's inline punctuation is backslash-escaped (and the
  `://` and `www.` that GFM turns into links), line breaks and other control characters become a space: the value
  cannot open a tag, a link, emphasis or a table cell, and cannot end its line (so no heading or list item either).
- `code`: a code span for identifiers, digests and URIs, verbatim when a code span can show the value as it is in
  any renderer and table (no backtick, `|`, `<`, `>`, `&` or control character in it), else `text`.
- `number`: a number in a format, or "—" for None, NaN and ±inf.
- `table`: a GFM table whose cells are Markdown made with the functions above (or our own words).

The failure webhook's text is rendered by Prefect's automation service, which cannot call these: its template
(`deployments/notify-on-failure.yaml`) neutralises what it interpolates with Jinja's own filters.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Sequence

DASH = "—"  # a number that is missing or not finite
CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")  # line breaks included
HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
PUNCTUATION = re.compile(r"[\\`*\[\]|~#]|(?<![^\W_])_|_(?![^\W_])")  # `_` inside a word emphasizes nothing
AUTOLINK = re.compile(r":(?=//)|(?<=www)\.", re.IGNORECASE)  # GFM's bare-URL links: `https://…`, `www.…`
CODE_UNSAFE = re.compile(r"[`|<>&\x00-\x1f\x7f\x85\u2028\u2029]")
UNESCAPED_PIPE = re.compile(r"(?<!\\)((?:\\\\)*)\|")  # a `|` after an even number of backslashes ends a cell


def text(value: object) -> str:
    """`value` as inline Markdown text that shows exactly its characters (control characters as spaces)."""
    escaped = CONTROL.sub(" ", str(value))
    escaped = re.sub(r"[&<>]", lambda m: HTML_ENTITIES[m.group()], escaped)
    escaped = PUNCTUATION.sub(lambda m: "\\" + m.group(), escaped)
    return AUTOLINK.sub(lambda m: "\\" + m.group(), escaped)


def code(value: object) -> str:
    """`value` as a code span (`` `s3://bucket/key` ``), or as `text` when a code span could not show it verbatim."""
    value = str(value)
    return f"`{value}`" if value and not CODE_UNSAFE.search(value) else text(value)


def number(value: object, spec: str = ".4f") -> str:
    """`value` formatted with `spec` (`format(0.93, ".4f")`); "—" for None, NaN and ±inf."""
    if value is None:
        return DASH
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return format(value, spec) if math.isfinite(value) else DASH


def finite_or_dash(value: object, digits: int = 4) -> object:
    """`value` for a table artifact: "—" when it is a non-finite number, a float rounded to `digits` (a table is
    read by people: 0.8462, not 0.8461538461538461), else as it is."""
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        return DASH
    return round(value, digits) if isinstance(value, float) else value


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GFM table: `header` and each row are cells of Markdown; a line break or an unescaped `|` in a cell is
    written so that it stays in its cell."""
    return "\n".join([_row(header), "|" + "---|" * len(header), *(_row(row) for row in rows)])


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(UNESCAPED_PIPE.sub(r"\1\\|", CONTROL.sub(" ", cell)) for cell in cells) + " |"
