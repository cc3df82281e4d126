"""Smoke test of an installed (non-editable) mlds_jax: run by `make package-check` with the
interpreter of a fresh virtualenv that holds only the built wheel and its dependencies,
from a directory outside the repository, so nothing can be imported from the source tree.

Checks: the package imports from site-packages, its version is the distribution's, py.typed
ships, and one tiny `fit` trains (the loss goes down) on data made here.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys
import sysconfig

import jax
import numpy as np
import optax

import mlds_jax as mj

site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
pkg = pathlib.Path(mj.__file__).resolve().parent
assert pkg.parent == site, f"mlds_jax imported from {pkg}, not from {site}"
assert importlib.metadata.version("mlds-jax") == mj.__version__, (
    importlib.metadata.version("mlds-jax"),
    mj.__version__,
)
assert (pkg / "py.typed").is_file(), "py.typed is missing from the installed package"

rng = np.random.default_rng(0)
X = rng.standard_normal((64, 4)).astype(np.float32)
y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)
params = mj.init_mlp(jax.random.key(0), [4, 8, 2], hidden="tanh", output="softmax")
params, history = mj.fit(
    params,
    X,
    y,
    loss="cross_entropy",
    optimizer=optax.adam(0.05),
    epochs=5,
    batch_size=16,
    key=jax.random.key(1),
    progress=False,
)
first, last = history["loss"][0], history["loss"][-1]
assert np.isfinite(last) and last < first, history["loss"]
print(
    f"smoke: mlds_jax {mj.__version__} from {pkg}; fit 5 epochs: loss {first:.3f} -> "
    f"{last:.3f}; python {sys.version.split()[0]}"
)
