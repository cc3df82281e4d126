// MathJax settings.  Only two kinds of content are typeset, nothing else on a page:
//  * pymdownx.arithmatex's output (generic mode: \( \) and \[ \] inside .arithmatex
//    elements), as mkdocs-material documents it;
//  * the notebooks' Markdown cells, rendered by nbconvert inside .jp-MarkdownOutput, which
//    write $...$ and $$...$$ in ordinary <p>, <li>, <h2> ... elements, and a notebook page's
//    table of contents: markNotebookMath() tags those elements (not their code) so that
//    MathJax looks into them.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|notebook-math",
  },
  startup: {
    pageReady() {
      markNotebookMath();
      return MathJax.startup.defaultPageReady();
    },
  },
};

function markNotebookMath() {
  const cells = ".jp-MarkdownOutput";
  document
    .querySelectorAll(`${cells}, ${cells} *:not(code):not(pre)`)
    .forEach((el) => el.classList.add("notebook-math"));
  // a notebook page's table of contents repeats its headings' $...$
  if (document.querySelector(cells)) {
    document
      .querySelectorAll(".md-nav--secondary .md-ellipsis")
      .forEach((el) => el.classList.add("notebook-math"));
  }
}

// mkdocs-material's instant navigation swaps pages without a reload: typeset each new page.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.startup && MathJax.typesetPromise) {
      markNotebookMath();
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
