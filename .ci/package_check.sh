#!/usr/bin/env bash
# `make package-check`: build the sdist and the wheel, install the wheel (not editable) into a
# fresh virtualenv, and smoke-test it there from outside the source tree.
#
#   bash .ci/package_check.sh [PYTHON]     PYTHON: an interpreter with `build` (default .venv)
#
# The wheel is built from the sdist (python -m build's default), so a file missing from the
# sdist fails here too.  Everything goes to build/package-check/ (removed first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
OUT="$PWD/build/package-check"
rm -rf "$OUT"
mkdir -p "$OUT"
t0=$SECONDS

"$PY" -m build --outdir "$OUT/dist" . >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
if grep -iE "SetuptoolsDeprecationWarning|license.*deprecat" "$OUT/build.log"; then
    echo "package-check: the build printed a deprecation warning (above)" >&2
    exit 1
fi
wheel=$(ls "$OUT"/dist/*.whl)
sdist=$(ls "$OUT"/dist/*.tar.gz)

# What the wheel holds: the package, py.typed, the licence, the SPDX expression; no tests.
"$PY" - "$wheel" "$sdist" <<'PYCODE'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA")))
meta = meta.decode()
assert "mlds_jax/py.typed" in names, "py.typed missing from the wheel"
assert "mlds_jax/__main__.py" in names, "__main__.py missing from the wheel"
assert any(n.endswith("licenses/LICENSE") for n in names), "LICENSE missing from the wheel"
assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))], names
assert "License-Expression: MIT" in meta, "no SPDX License-Expression in METADATA"
members = tarfile.open(sdist).getnames()
assert any(m.endswith("/LICENSE") for m in members), "LICENSE missing from the sdist"
print(f"wheel: {len(names)} files; sdist: {len(members)} members")
PYCODE
ls -l "$OUT"/dist
echo "package-check: built in $((SECONDS - t0)) s"

t1=$SECONDS
"$PY" -m venv "$OUT/venv"
"$OUT/venv/bin/python" -m pip install --quiet "$wheel"
echo "package-check: fresh venv + wheel installed in $((SECONDS - t1)) s"

# Smoke test from a directory outside the repository.
mkdir -p "$OUT/run"
cd "$OUT/run"
"$OUT/venv/bin/python" "$OLDPWD/.ci/smoke_installed.py"
"$OUT/venv/bin/mlds-jax" --help >/dev/null
"$OUT/venv/bin/python" -m mlds_jax --help >/dev/null
"$OUT/venv/bin/python" -m mlds_jax gradcheck --sizes 3,4,2
echo "package-check: OK in $((SECONDS - t0)) s"
