"""mkdocs hooks of this site (``hooks:`` in mkdocs.yml); not part of the package.

* ``on_config``: the nav's Notebooks section gets ``notebooks/NN_*.ipynb`` in order, after its
  landing page.  The README's table is the list a reader sees (``tests/test_docs.py`` checks
  that it names the same files); nobody keeps a second list here.
* ``on_files``:
  - ``cli.md``, the command-line reference, generated from ``mlds_jax.cli.build_parser()``
    at every build, so it is always the parser's own ``--help`` (no file to keep in sync);
  - MathJax, copied from the ``django-static-mathjax`` package (the ``docs`` extra: MathJax
    3's own distribution, no dependencies) to ``javascripts/mathjax/``: the site loads no
    script from another host;
  - the notebooks' outputs: with ``MLDS_DOCS_EXECUTE=false`` and ``$MLDS_EXECUTED_NOTEBOOKS``
    naming a folder, each notebook page is rendered from the executed copy of it there, as
    ``tests/test_notebooks.py`` writes them when that variable is set (CI does: the notebooks
    run once, in the tests, and the site shows their outputs).  A missing or stale copy
    fails the build.
* ``on_page_content`` (notebook pages): the table of contents takes its anchors and texts
  from the rendered headings (mkdocs-jupyter slugs the TOC from a Markdown rendering that
  drops inline code and the headings from nbconvert's, which keeps it: ``## 5. The check:
  `mj.f` `` got two different ids, and "1. `notes.md`" the title "1."); nbconvert's dead
  MathJax 2 stub and its mermaid loader (an import from a CDN, for diagrams these notebooks
  don't have) are removed.
* ``on_post_build``: every in-site link ``page#anchor`` must reach an id on its page (mkdocs'
  own anchor validation sees only Markdown pages, not the notebooks nor the API pages'
  generated HTML), and no page, style sheet or page script may load anything from another
  host.  Either logs a warning, which fails the strict build.

The functions that do the work take plain values (text, paths), so ``tests/test_docs.py``
checks them without mkdocs installed.
"""

from __future__ import annotations

import contextlib
import html
import html.parser
import json
import logging
import os
import pathlib
import re
import sys
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

log = logging.getLogger("mkdocs.hooks.mlds_jax_docs")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
MATHJAX_DEST = "javascripts/mathjax"
# MathJax's combined components besides the one the site loads (tex-mml-chtml.js), and the
# SVG output, are not needed: what tex-mml-chtml.js loads lazily (TeX extensions, CHTML
# fonts, the menu, accessibility, speech rules) is all kept.
MATHJAX_UNUSED = re.compile(r"^(?!tex-mml-chtml\.js$)[^/]+\.js$|^output/svg/")


# --- the command-line page ----------------------------------------------------------------


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help to $COLUMNS: fix it, so the page does not depend on a terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def subcommands(parser) -> list[tuple[str, object]]:
    import argparse

    found, seen = [], set()
    for action in parser._actions:  # argparse has no public walk over subcommands
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map to the same parser
                    seen.add(id(sub))
                    found.append((name, sub))
    return found


def cli_reference(parser=None) -> str:
    """The command-line page (Markdown): the help of ``mlds-jax`` and of each command, as
    ``mlds-jax [COMMAND] --help`` prints it, at 100 columns."""
    if parser is None:
        with _repository_first():
            from mlds_jax.cli import build_parser
        parser = build_parser()
    lines = [
        "# Command line",
        "",
        "Every command and option of `mlds-jax`, as its `--help` prints them: this page is",
        "generated from `mlds_jax.cli.build_parser()` each time the site is built",
        "(`docs/hooks.py`), so it cannot drift from the parser. `make train ARGS=\"...\"` runs",
        "`mlds-jax train` with those options; `python -m mlds_jax` is the same command.",
    ]

    def add(p, depth: int) -> None:
        with _columns(100):
            text = p.format_help().rstrip()
        lines.extend(["", "#" * depth + f" `{p.prog}`", "", "```text", text, "```"])
        for _, sub in subcommands(p):
            add(sub, min(depth + 1, 6))

    add(parser, 2)
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _repository_first() -> Iterator[None]:
    """Import the package from this checkout (the one being documented), not whatever else
    is installed."""
    sys.path.insert(0, str(ROOT))
    try:
        yield
    finally:
        sys.path.remove(str(ROOT))


# --- the notebooks ------------------------------------------------------------------------


def notebook_cells(path: pathlib.Path) -> list[tuple[str, str]]:
    """(cell type, source) of each cell of an .ipynb: what an executed copy must share with
    the notebook it claims to be."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(c["cell_type"], "".join(c["source"])) for c in cells]


def executed_copy(notebook: pathlib.Path, folder: pathlib.Path) -> tuple[pathlib.Path | None, str]:
    """``folder/<notebook's name>`` if it holds this notebook's cells, with outputs; else None
    and why not."""
    copy = folder / notebook.name
    if not copy.is_file():
        return None, f"no executed copy {copy}"
    if notebook_cells(copy) != notebook_cells(notebook):
        return None, f"{copy} is stale (its cells differ from {notebook.name})"
    cells = json.loads(copy.read_text(encoding="utf-8"))["cells"]
    if not any(c.get("outputs") for c in cells if c["cell_type"] == "code"):
        return None, f"{copy} has no outputs"
    return copy, ""


_HEADING = re.compile(r"<h([1-6])\b[^>]*\bid=\"([^\"]+)\"[^>]*>(.*?)</h\1>", re.I | re.S)
_ANCHOR_LINK = re.compile(r"<a\b[^>]*\banchor-link\b.*?</a>", re.S)
# nbconvert's page head: a MathJax 2 loader with an empty src and its configuration (dead
# code here: the site's MathJax 3 typesets the notebooks), and a mermaid loader that imports
# from a CDN when a page has a diagram
_NBCONVERT_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->",
                                re.S)
_MERMAID_LOADER = re.compile(
    r"<script type=\"module\">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>", re.S)


def heading_text(inner_html: str) -> str:
    """A heading's text as the TOC shows it: its code kept, tags and the ¶ link dropped."""
    text = re.sub(r"<[^>]+>", "", _ANCHOR_LINK.sub("", inner_html))
    return html.escape(html.unescape(" ".join(text.split())), quote=False)


def retarget_toc(toc_items, page_html: str) -> int:
    """Give the TOC entries (pre-order) the ids and texts of the page's headings, in order,
    when both list the same levels; returns how many ids changed."""
    headings = [(int(level), hid, heading_text(inner))
                for level, hid, inner in _HEADING.findall(page_html)]
    items = []

    def walk(entries):
        for item in entries:
            items.append(item)
            walk(item.children)

    walk(toc_items)
    if [item.level for item in items] != [level for level, _, _ in headings]:
        return 0
    changed = 0
    for item, (_, hid, text) in zip(items, headings, strict=True):
        changed += item.id != hid
        item.id, item.title = hid, text or item.title
    return changed


# --- checks of the built site -------------------------------------------------------------


class _Scan(html.parser.HTMLParser):
    """The ids, the links and the external loads of one HTML page."""

    LOADING_LINKS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "manifest"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.external: list[str] = []
        self._in: str | None = None  # inside <script> or <style>

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "name" in a:
            self.ids.add(a["name"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if "src" in a and is_remote(a["src"]):
            self.external.append(f"<{tag} src={a['src']}>")
        rel = set(a.get("rel", "").lower().split())
        if tag == "link" and is_remote(a.get("href", "")) and self.LOADING_LINKS & rel:
            self.external.append(f"<link rel={a['rel']} href={a['href']}>")
        if "class" in a and "mermaid" in a["class"].split():
            # mkdocs-material fetches mermaid from a CDN for such a diagram
            self.external.append(f"<{tag} class=mermaid> (the theme loads mermaid from a CDN)")
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.external.extend(remote_loads_in_code(data))


def is_remote(url: str) -> bool:
    return bool(re.match(r"^\s*(https?:)?//", url, re.I))


_CODE_LOADS = re.compile(
    r"""(?:\bimport\s*\(\s*|\bfrom\s+|\bimport\s+|\burl\(\s*|@import\s+|\bsrc\s*=\s*|"""
    r"""\bfetch\(\s*|\bimportScripts\(\s*)["']?((?:https?:)?//[^"')\s]+)""",
    re.I,
)


def remote_loads_in_code(code: str) -> list[str]:
    """URLs that inline script or CSS would load (import, url(), @import, src =, fetch), and
    any string constant that holds a URL to a known CDN."""
    found = [m.group(1) for m in _CODE_LOADS.finditer(code)]
    found += re.findall(r"""["'`]((?:https?:)?//[^"'`]*\bcdn[^"'`]*)["'`]""", code, re.I)
    return sorted(set(found))


def scan_site(site: pathlib.Path) -> tuple[list[str], list[str]]:
    """(broken in-site anchors, external loads) of a built site, one line each."""
    pages: dict[pathlib.Path, _Scan] = {}
    for path in sorted(site.rglob("*.html")):
        if MATHJAX_DEST in path.as_posix():
            continue
        scan = _Scan()
        scan.feed(path.read_text(encoding="utf-8"))
        pages[path.resolve()] = scan
    broken, external = [], []
    for path, scan in pages.items():
        where = path.relative_to(site.resolve()).as_posix()
        external += [f"{where}: {e}" for e in scan.external]
        for href in scan.hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or not parts.fragment:
                continue
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if target.is_dir() or not target.suffix:  # a directory URL: its index.html
                target = target / "index.html"
            if target.suffix != ".html":
                continue
            if target not in pages:
                broken.append(f"{where}: {href} (no such page)")
            elif unquote(parts.fragment) not in pages[target].ids:
                broken.append(f"{where}: {href} (no such id on the page)")
    for css in sorted(site.rglob("*.css")):
        if MATHJAX_DEST not in css.as_posix():
            where = css.relative_to(site).as_posix()
            external += [f"{where}: {u}" for u in remote_loads_in_code(css.read_text("utf-8"))]
    return sorted(set(broken)), sorted(set(external))


# --- the hooks ----------------------------------------------------------------------------


def on_config(config):
    docs = pathlib.Path(config["docs_dir"])
    notebooks = [f"notebooks/{p.name}" for p in sorted((docs / "notebooks").glob(NOTEBOOK_GLOB))]
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Notebooks" in entry:
            section = entry["Notebooks"]
            section[:] = [x for x in section if x not in notebooks] + notebooks
            return config
    log.warning("mkdocs.yml's nav has no 'Notebooks' section for the notebooks")
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "cli.md", content=cli_reference()))

    import mathjax  # django-static-mathjax: MathJax 3's es5 distribution as package data

    es5 = pathlib.Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    for path in sorted(es5.rglob("*")):
        rel = path.relative_to(es5).as_posix()
        if path.is_file() and not MATHJAX_UNUSED.match(rel):
            files.append(File.generated(config, f"{MATHJAX_DEST}/{rel}", abs_src_path=str(path)))
    licence = es5.parent / "LICENSE"
    if licence.is_file():
        files.append(File.generated(config, f"{MATHJAX_DEST}/LICENSE", abs_src_path=str(licence)))

    jupyter = config["plugins"].get("mkdocs-jupyter")
    folder = os.environ.get("MLDS_EXECUTED_NOTEBOOKS")
    if jupyter is None or jupyter.config["execute"]:
        return files  # the notebooks run during the build (or are not pages)
    if not folder:
        log.info("notebooks rendered without outputs (MLDS_DOCS_EXECUTE=false and no "
                 "MLDS_EXECUTED_NOTEBOOKS)")
        return files
    for file in files:
        if file.src_uri.startswith("notebooks/") and file.src_uri.endswith(".ipynb"):
            copy, why = executed_copy(pathlib.Path(file.abs_src_path), pathlib.Path(folder))
            if copy is None:
                log.warning("%s: %s; run `MLDS_EXECUTED_NOTEBOOKS=%s pytest "
                            "tests/test_notebooks.py` or build with MLDS_DOCS_EXECUTE=true",
                            file.src_uri, why, folder)
            else:
                file.abs_src_path = str(copy)  # what mkdocs-jupyter converts and offers
    return files


def on_page_content(html_text, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html_text
    retarget_toc(page.toc.items, html_text)
    return _MERMAID_LOADER.sub("", _NBCONVERT_MATHJAX.sub("", html_text))


def on_post_build(config):
    broken, external = scan_site(pathlib.Path(config["site_dir"]))
    for line in broken:
        log.warning("broken anchor: %s", line)
    for line in external:
        log.warning("loads from another host: %s", line)
