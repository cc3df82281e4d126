"""The README's API tour runs as printed (a newcomer copies it first)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_api_tour_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = text[text.index("## API tour"):]
    code = tour[tour.index("```python") + len("```python"):]
    code = code[: code.index("```")]
    monkeypatch.chdir(tmp_path)  # the tour saves a file into the working directory
    names: dict = {}
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float (as users run)
        exec(compile(code, "README.md API tour", "exec"), names)
    # what the tour's comments promise
    assert names["Y_hat"].shape == (8, 3)
    assert names["nrm"].shape == (8,) and names["G"].shape == (8, 8)
    np.testing.assert_allclose(np.diag(names["G"]), np.asarray(names["nrm"]) ** 2, rtol=1e-6)
    assert names["lam"] > 0 and np.isclose(names["eta"], 2 / names["lam"], rtol=1e-3)
    assert len(names["history"]["sharpness"]) == 5
    assert (tmp_path / "model.safetensors").is_file()
