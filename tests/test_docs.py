"""The README and the documentation pages run as printed (a newcomer copies them first).

Every ```python block of every page runs, top to bottom, as a reader running the page in
one session would: each page gets a fresh namespace that its blocks share, and a temporary
working directory (blocks save files).  A page's pymdownx.snippets lines
(``--8<-- "FILE:SECTION"``) are replaced by that section first, as the site shows them, so
``docs/index.md`` runs the README's quick start before its own blocks.

The blocks run in a reader's JAX: float32 (x64 off), standard dtype promotion (optax's Adam
mixes int and float) and rank promotion allowed, not the suite's strict float64 settings.

A page that begins with the same blocks as a page already run (docs/index.md includes the
README's quick start) starts from the namespace and files those blocks left: the same code,
run once.

A block that is not meant to run says so in the page: the line right before its fence is
``<!-- not run: REASON -->``.  That marker, and nothing else, skips a block; a marker that is
not followed by a ```python fence fails.  Other fences (```bash, ```text, a bare ```) are
never run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The pages a reader meets: the README, the site's own pages, the notebooks' and benchmarks'
# READMEs (the site includes parts of both).  docs/notebooks is a link to notebooks/.
PAGES = sorted(
    {ROOT / "README.md", ROOT / "notebooks" / "README.md", ROOT / "benchmarks" / "README.md"}
    | set((ROOT / "docs").glob("*.md"))
    | set((ROOT / "docs" / "api").glob("*.md")),
)

NOT_RUN = re.compile(r"^<!-- not run: \S.* -->$")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$')
SECTION = re.compile(r"--8<-- \[(start|end):([\w-]+)\]")


@dataclasses.dataclass
class Block:
    """One fenced block of a page (after its snippets were included)."""

    page: str
    line: int  # 1-based line of the block's first code line in the expanded page
    language: str
    code: str
    heading: str  # the last ## heading above it
    marker: str | None  # the <!-- not run: ... --> line right before its fence, if any


def section(path: pathlib.Path, name: str | None) -> str:
    """A file's text, or its ``--8<-- [start:name]`` ... ``[end:name]`` section."""
    text = path.read_text(encoding="utf-8")
    if name is None:
        return text
    start = re.search(rf"--8<-- \[start:{re.escape(name)}\].*\n", text)
    end = re.search(rf".*--8<-- \[end:{re.escape(name)}\]", text)
    assert start, f"{path} has no snippet section {name!r}"
    return text[start.end() : end.start() if end else None]  # no end: to the end of the file


def expand_snippets(text: str) -> str:
    """Replace each ``--8<-- "FILE[:SECTION]"`` line (paths from the repository root, as the
    site's ``base_path``) by what it includes, recursively, as pymdownx.snippets does."""
    out = []
    for line in text.splitlines():
        m = SNIPPET.match(line.strip())
        if m:
            file, _, name = m.group(1).partition(":")
            out.append(expand_snippets(section(ROOT / file, name or None)))
        elif not SECTION.search(line):
            out.append(line)
    return "\n".join(out)


def blocks(page: pathlib.Path) -> list[Block]:
    lines = expand_snippets(page.read_text(encoding="utf-8")).splitlines()
    found, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        m = FENCE.match(line)
        if not m:
            i += 1
            continue
        fence, language = m.group(1), m.group(2).lower()
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence))
        found.append(Block(page.relative_to(ROOT).as_posix(), i + 2, language,
                           "\n".join(lines[i + 1 : end]), heading,
                           before if NOT_RUN.match(before) else None))
        i = end + 1
    return found


# The code of the blocks run so far (a page's first k blocks) -> the namespace and working
# directory after them.  docs/index.md includes the README's quick start: it resumes from
# the README's run of those same blocks instead of compiling them all again, as if it had
# run them itself (the same code, in the same order, from a fresh namespace).
_RUNS: dict[tuple[str, ...], tuple[dict, pathlib.Path]] = {}


def run_page(page: pathlib.Path, workdir: pathlib.Path) -> list[tuple[Block, dict]]:
    """Run the page's Python blocks in one namespace, in ``workdir`` (the current directory);
    returns each block it ran with a shallow copy of the namespace after it (for assertions
    on what a block promised)."""
    todo = [b for b in blocks(page) if b.language in ("python", "py") and not b.marker]
    codes = tuple(b.code for b in todo)
    names: dict = {"__name__": "__main__"}
    start = next((k for k in range(len(codes), 0, -1) if codes[:k] in _RUNS), 0)
    if start:
        saved, saved_dir = _RUNS[codes[:start]]
        names = dict(saved)
        shutil.copytree(saved_dir, workdir, dirs_exist_ok=True)
    ran = []
    with (jax.enable_x64(False), jax.numpy_dtype_promotion("standard"),
          jax.numpy_rank_promotion("allow")):
        for k, block in enumerate(todo[start:], start + 1):
            # pad so that a traceback names the page's own line numbers
            code = compile("\n" * (block.line - 1) + block.code, block.page, "exec")
            exec(code, names)
            ran.append((block, dict(names)))
            _RUNS[codes[:k]] = (dict(names), workdir)
    return ran


def _ids(paths):
    return [p.relative_to(ROOT).as_posix() for p in paths]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks save files into the working directory
    ran = run_page(page, tmp_path)
    if page == ROOT / "README.md":
        readme_keeps_its_promises(ran, tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_not_run_markers_stand_before_python_blocks(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("<!-- not run"):
            assert NOT_RUN.match(line.strip()), (
                f"{page.name}:{i + 1}: write the marker as '<!-- not run: REASON -->'")
            following = next((x for x in lines[i + 1 :] if x.strip()), "")
            assert re.match(r"^```(python|py)\b", following), (
                f"{page.name}:{i + 1}: a 'not run' marker must stand right before a ```python "
                f"block, not before {following!r}")


def readme_keeps_its_promises(ran: list[tuple[Block, dict]], workdir: pathlib.Path) -> None:
    """What the README's comments promise, checked on the namespace after each section."""
    by_heading = {}
    for block, names in ran:  # the namespace after each section's last block
        by_heading[block.heading] = names
    # what the API tour's comments promise
    names = by_heading["API tour"]
    assert names["Y_hat"].shape == (8, 3)
    assert names["nrm"].shape == (8,) and names["G"].shape == (8, 8)
    np.testing.assert_allclose(np.diag(names["G"]), np.asarray(names["nrm"]) ** 2, rtol=1e-4)
    assert names["lam"] > 0 and np.isclose(names["eta"], 2 / names["lam"], rtol=1e-3)
    assert len(names["history"]["sharpness"]) == 5
    assert (workdir / "model.safetensors").is_file()
    # the scikit-learn section: the coefficients' layout and the saved, reloaded estimator
    names = by_heading["scikit-learn users"]
    n_features = names["X"].shape[1]
    assert names["clf"].coefs_[0].shape == (n_features, 100)
    assert (workdir / "clf.npz").is_file()
    best = names["search"].best_estimator_[-1]
    np.testing.assert_array_equal(names["clf"].predict(names["X_scaled"]),
                                  best.predict(names["X_scaled"]))


def readme_notebook_table() -> list[str]:
    """The notebooks the README's table lists, in its order: the one list of notebooks (the
    site's Notebooks page includes the same table)."""
    table = section(ROOT / "README.md", "notebooks")
    return re.findall(r"^\| \[`(\d\d_\w+)`\]\(notebooks/\1\.ipynb\) \|", table, re.M)


def test_the_readme_lists_every_notebook_once_in_order():
    on_disk = [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))]
    assert on_disk, "no notebooks/NN_*.py"
    assert readme_notebook_table() == on_disk, (
        "the README's notebook table (between the notebooks snippet markers) must name every "
        "notebooks/NN_*.py, in order, one row each")


def test_no_page_counts_the_notebooks():
    # "the five tutorials" went stale twice: pages name no count, the table is the list
    words = r"(two|three|four|five|six|seven|eight|nine|ten|\d+)"
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        stale = re.findall(rf"\b{words} (tutorials|notebooks)\b", text, re.I)
        assert not stale, f"{page.relative_to(ROOT)} counts the notebooks: {stale}"


def test_install_instructions_work_from_a_clone():
    # the package is not on PyPI: no page may tell a reader to install it by name
    for page in [*PAGES, ROOT / "mkdocs.yml"]:
        text = page.read_text(encoding="utf-8")
        bad = re.findall(r"pip install[^\n`]*\bmlds-jax\b", text)
        assert not bad, f"{page.relative_to(ROOT)}: {bad} (install from a clone: pip install -e .)"


# --- the site's hooks (docs/hooks.py): checked here without mkdocs --------------------------


def _hooks():
    spec = importlib.util.spec_from_file_location("mlds_jax_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def test_the_cli_page_has_every_command_and_option():
    import argparse

    from mlds_jax.cli import build_parser

    page = hooks.cli_reference()
    parsers = [("mlds-jax", build_parser())]
    while parsers:
        prog, parser = parsers.pop()
        assert f"`{prog}`" in page, f"no section for {prog}"
        for action in parser._actions:  # argparse's own list of what it parses
            for flag in action.option_strings:
                assert flag in page, f"{prog} {flag} is not on the command-line page"
            if isinstance(action, argparse._SubParsersAction):
                parsers += [(f"{prog} {name}", sub) for name, sub in action.choices.items()]


def test_the_cli_page_walks_nested_commands_once():
    import argparse

    parser = argparse.ArgumentParser(prog="tool", description="the tool")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", aliases=["r"], help="run it")
    run.add_argument("--fast", action="store_true", help="quickly")
    nested = run.add_subparsers(dest="what").add_parser("twice", help="run it twice")
    nested.add_argument("--gap", type=int, help="seconds between")
    page = hooks.cli_reference(parser)
    assert page.count("## `tool run`") == 1  # the alias is the same parser: one section
    assert "#### `tool run twice`" in page and "--gap GAP" in page and "--fast" in page
    assert all(len(line) <= 100 for line in page.splitlines() if "usage" not in line)


def _page(path: pathlib.Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><head></head><body>{body}</body></html>", encoding="utf-8")


def test_the_site_check_finds_broken_anchors_and_remote_loads(tmp_path):
    _page(tmp_path / "index.html",
          '<h2 id="top">t</h2><a href="#top">ok</a><a href="#gone">same page</a>'
          '<a href="b/#x">ok</a><a href="b/#y">other page</a><a href="c/#z">no page</a>'
          '<a href="https://github.com/x#readme">a link, not a load</a>'
          '<svg xmlns="http://www.w3.org/2000/svg"></svg>'
          '<script src="https://cdn.example.org/lib.js"></script>'
          '<script src="assets/local.js"></script>'
          '<link rel="stylesheet" href="//fonts.example.com/f.css">'
          '<link rel="canonical" href="https://example.org/">'
          '<script type="module">const m = await import("https://esm.example.net/m.mjs");'
          ' const u = "https://cdnjs.example.com/x.js";</script>'
          '<pre class="mermaid">graph LR</pre>')
    _page(tmp_path / "b" / "index.html", '<p id="x">x</p>')
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "style.css").write_text(
        '@import url("https://fonts.example.com/css");\n.a { background: url(img.png) }')
    broken, external = hooks.scan_site(tmp_path)
    assert broken == ["index.html: #gone (no such id on the page)",
                      "index.html: b/#y (no such id on the page)",
                      "index.html: c/#z (no such page)"]
    assert external == [
        "assets/style.css: https://fonts.example.com/css",
        "index.html: <link rel=stylesheet href=//fonts.example.com/f.css>",
        "index.html: <pre class=mermaid> (the theme loads mermaid from a CDN)",
        "index.html: <script src=https://cdn.example.org/lib.js>",
        "index.html: https://cdnjs.example.com/x.js",
        "index.html: https://esm.example.net/m.mjs",
    ]


def test_the_site_config_names_no_remote_script():
    for n, line in enumerate((ROOT / "mkdocs.yml").read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0]
        assert "://" not in code, f"mkdocs.yml:{n}: {line.strip()} (serve it from the site)"


def test_notebook_toc_takes_the_rendered_ids():
    @dataclasses.dataclass
    class Item:  # the fields of mkdocs' AnchorLink that the hook uses
        title: str
        id: str
        level: int
        children: list

    toc = [Item("T", "t", 1, [Item("5. The check:", "5-the-check", 2, []),
                              Item("6.", "6", 2, [])])]
    rendered = ('<h1 id="t">T<a class="anchor-link" href="#t">¶</a></h1>'
                '<h2 id="5-the-check-mjf">5. The check: <code>mj.f</code></h2>'
                '<h2 id="6-mjg">6. <code>mj.g</code> &amp; $x$</h2>')
    assert hooks.retarget_toc(toc, rendered) == 2
    assert [(i.id, i.title) for i in [toc[0], *toc[0].children]] == [
        ("t", "T"), ("5-the-check-mjf", "5. The check: mj.f"), ("6-mjg", "6. mj.g &amp; $x$")]
    # headings that do not line up with the TOC: left alone (the site check reports them)
    assert hooks.retarget_toc([Item("a", "a", 2, [])], '<h3 id="b">b</h3>') == 0


def test_executed_copies_must_hold_the_notebooks_cells(tmp_path):
    def notebook(path, sources, outputs):
        cells = [{"cell_type": "code", "source": s, "metadata": {}, "execution_count": None,
                  "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
                  if outputs else []} for s in sources]
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                    "nbformat_minor": 5}), encoding="utf-8")

    source, folder = tmp_path / "01_a.ipynb", tmp_path / "executed"
    notebook(source, ["x = 1", "print(x)"], outputs=False)
    assert hooks.executed_copy(source, folder)[0] is None  # none yet
    notebook(folder / "01_a.ipynb", ["x = 1", "print(x)"], outputs=False)
    assert "no outputs" in hooks.executed_copy(source, folder)[1]
    notebook(folder / "01_a.ipynb", ["x = 2", "print(x)"], outputs=True)
    assert "stale" in hooks.executed_copy(source, folder)[1]
    notebook(folder / "01_a.ipynb", ["x = 1", "print(x)"], outputs=True)
    assert hooks.executed_copy(source, folder)[0] == folder / "01_a.ipynb"


def test_the_nav_lists_every_notebook_after_the_landing_page():
    nav = [{"Getting started": "index.md"}, {"Notebooks": ["tutorials.md"]}]
    config = {"docs_dir": str(ROOT / "docs"), "nav": nav}
    hooks.on_config(config)
    hooks.on_config(config)  # `mkdocs serve` rebuilds: still one entry each
    notebooks = [f"notebooks/{name}.ipynb" for name in readme_notebook_table()]
    assert nav[1]["Notebooks"] == ["tutorials.md", *notebooks]
