"""docs/derivations.md and the code cite each other: every equation number the package cites
exists in the document, and every numbered equation is cited by some code.

A citation is the equation's number in parentheses, e.g. ``(B2)``; a range ``(B2)-(B4)`` cites
every number in between.  The document numbers an equation with MathJax's ``\\tag{B2}``.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "derivations.md"
PACKAGE = ROOT / "mlds_jax"

TAG = re.compile(r"\\tag\{([A-Z]{1,2}\d+)\}")
CITE = re.compile(r"\(([A-Z]{1,2})(\d+)\)(?:\s*[-–]\s*\(\1(\d+)\))?")


def documented() -> list[str]:
    return TAG.findall(DOC.read_text(encoding="utf-8"))


def cited() -> dict[str, set[str]]:
    """Equation number -> the package files that cite it."""
    where: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for prefix, first, last in CITE.findall(path.read_text(encoding="utf-8")):
            stop = int(last) if last else int(first)
            for k in range(int(first), stop + 1):
                where.setdefault(f"{prefix}{k}", set()).add(str(path.relative_to(ROOT)))
    return where


def test_every_equation_is_numbered_once():
    tags = documented()
    assert tags, "docs/derivations.md numbers no equation"
    duplicates = sorted({t for t in tags if tags.count(t) > 1})
    assert not duplicates, f"numbered more than once: {duplicates}"


def test_the_code_cites_only_documented_equations():
    missing = {eq: sorted(files) for eq, files in cited().items() if eq not in documented()}
    assert not missing, f"cited in code but not in docs/derivations.md: {missing}"


def test_every_documented_equation_is_cited_by_code():
    uncited = sorted(set(documented()) - set(cited()))
    assert not uncited, f"documented but cited by no code in mlds_jax/: {uncited}"


def test_the_citation_pattern_reads_ranges():
    # the parser itself, on a known string: a range cites its ends and everything between
    found = [m.groups() for m in CITE.finditer("see (B2)-(B4) and (L7); not (x1) or (N)")]
    assert found == [("B", "2", "4"), ("L", "7", None)]
