"""Griffe extension for the docs build: the reST habits of our docstrings, as Markdown.

The package's docstrings are Google style (Args/Returns/Raises) with a few reST habits that
``help()`` and IDEs show well but Markdown does not.  When mkdocstrings loads the package,
this rewrites (in memory only; the source is untouched):

* ``:func:`name``` / ``:class:`~pkg.Name``` (any Sphinx role) -> ```name``` / ```Name```;
* ``.. math:: ...`` (inline, or an indented block) -> a ``$$ ... $$`` block for arithmatex;
* ``Example:`` -> ``Examples:``, the section name griffe's Google parser knows (so the
  doctest lines in it become code);
* unindented ``>>>`` lines (module docstrings) and the output lines after them -> a fenced
  ``pycon`` block;
* a paragraph ending in ``::`` (a reST literal block follows) -> ending in ``:``;
* an ``Attributes:`` section that lists names rather than ``name: description`` entries
  (the estimators' fitted attributes, as scikit-learn's docstrings summarise them) -> a
  paragraph headed **Attributes:**, which griffe's Google parser then leaves as text.

Enabled in mkdocs.yml (``extensions: [docs/griffe_rst.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]+?)(?:\s*<[^>]+>)?`")
_MATH = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
_ENTRY = re.compile(r"^\s*\w+(\s*\([^)]*\))?\s*:(\s|$)")  # "name: ...", "name (type): ..."


def _role(match: re.Match) -> str:
    target = match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with the reST constructs above turned into Markdown."""
    lines = _ROLE.sub(_role, text).split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH.match(line)
        if math:
            pad, body = math.group(1), [math.group(2).strip()] if math.group(2).strip() else []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(pad)):
                if lines[i].strip():
                    body.append(lines[i].strip())
                elif body and i + 1 < len(lines) and _indent(lines[i + 1]) <= len(pad):
                    break
                i += 1
            out += ["", f"{pad}$$", *(f"{pad}{b}" for b in body), f"{pad}$$", ""]
            continue
        if line.strip() == "Attributes:":
            following = next((x for x in lines[i + 1 :] if x.strip()), "")
            if following and not _ENTRY.match(following):
                out += [line.replace("Attributes:", "**Attributes:**")]
                i += 1
                continue
        if line.strip() == "Example:":
            out.append(line.replace("Example:", "Examples:"))
        elif line.startswith(">>> "):
            block = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) == 0:
                block.append(lines[i])
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        elif line.rstrip().endswith("::") and line.strip() != "::":
            out.append(line.rstrip()[:-1])
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`rst_to_markdown`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
