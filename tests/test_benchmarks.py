"""Smoke test of the benchmark suite (benchmarks/run.py) at its tiny size: it runs end to end,
prints the expected table rows, and every number is positive and finite.  No timing
assertions: the numbers depend on the machine and its load.

Also checks that the NumPy baseline (benchmarks/numpy_mlp.py) computes the same gradients as
``mj.manual_grads``, so the comparison is between equal computations.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import mlds_jax as mj

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("run")


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py")))
def test_every_benchmark_imports(name):
    """Each script's imports resolve against today's package (a renamed or removed module
    shows here, not in the next benchmark run); importing runs none of its measurements."""
    module = _load(name)
    assert module.__name__ == f"_bench_{name}"


def test_flop_count(bench):
    # 64-128-64-10: forward 2·(64·128 + 128·64 + 64·10), dW the same, dX without layer 1
    mm = [2 * 64 * 128, 2 * 128 * 64, 2 * 64 * 10]
    assert bench.train_flops_per_sample([64, 128, 64, 10]) == 2 * sum(mm) + mm[1] + mm[2]
    assert bench.train_flops_per_sample([784, 512, 256, 10]) == 2_407_424


def test_numpy_mlp_matches_manual_grads():
    numpy_mlp = _load("numpy_mlp")
    rng = np.random.default_rng(0)
    sizes = [6, 5, 4, 3]
    model = numpy_mlp.NumpyMLP(sizes, seed=1, dtype=np.float64)
    model.bs = [rng.standard_normal(b) * 0.1 for b in sizes[1:]]  # non-zero biases
    X = rng.standard_normal((7, 6))
    y = rng.integers(0, 3, 7)
    params = tuple(
        mj.Dense(W=jnp.asarray(W), b=jnp.asarray(b),
                 activation="softmax" if i == len(sizes) - 2 else "relu")
        for i, (W, b) in enumerate(zip(model.Ws, model.bs, strict=True))
    )
    loss, dWs, dbs = model.loss_and_grads(X, numpy_mlp.one_hot(y, 3, np.float64))
    grads = mj.manual_grads(params, X, y, "cross_entropy")
    assert math.isclose(loss, float(mj.loss(params, X, y, "cross_entropy")), rel_tol=1e-12)
    for g, dW, db in zip(grads, dWs, dbs, strict=True):
        np.testing.assert_allclose(dW, np.asarray(g.W), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(db, np.asarray(g.b), rtol=1e-10, atol=1e-12)
    # one SGD step is W ← W − α ∂L/∂W
    W0 = model.Ws[0].copy()
    model.sgd_step(X, numpy_mlp.one_hot(y, 3, np.float64), 0.5)
    np.testing.assert_allclose(model.Ws[0], W0 - 0.5 * np.asarray(grads[0].W), rtol=1e-12)


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_tiny_run(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    # Two of the four workloads (one per data set) keep the run well under a minute: the
    # time goes into XLA compilations, one per (workload, JAX contender).  One torch thread:
    # with two, a busy machine can stall PyTorch's OpenMP barriers for seconds per epoch;
    # this is a smoke test, not a measurement.
    workloads = ["digits-32", "mnist-128"]
    results = bench.main(["--size", "tiny", "--workloads", ",".join(workloads), "--json",
                          str(out), "--quiet", "--torch-threads", "1",
                          "--no-whole-call"])
    printed = capsys.readouterr().out
    assert jnp.zeros(()).dtype == jnp.float64  # the suite's x64 setting is left alone

    expected = list(bench.CONTENDERS)
    if not bench.torch_available():
        expected.remove("torch")
        assert "torch (not importable)" in results["skipped"]
    assert list(results["workloads"]) == workloads
    table_rows = [line for line in printed.splitlines() if line.startswith("| ")]
    for wname, wres in results["workloads"].items():
        assert list(wres["contenders"]) == expected
        for cname, c in wres["contenders"].items():
            # the markdown table has one row per (workload, contender)
            assert sum(line.startswith(f"| {wname} ") and f"| {cname} |" in line
                       for line in table_rows) == 1, (wname, cname)
            assert len(c["times_s"]) == wres["rounds"] + 1
            for key in ("median", "min", "max"):
                assert _positive_finite(c["epoch_s"][key]), (wname, cname, key)
            assert c["epoch_s"]["iqr"] >= 0
            for key in ("samples_per_s", "gflops", "first_epoch_s"):
                assert _positive_finite(c[key]), (wname, cname, key)
            if cname in bench.JAX_CONTENDERS:
                assert math.isfinite(c["compile_s"]) and c["compile_s"] >= 0
    assert results["workloads"]["mnist-128"]["n"] == bench.MNIST_ROWS["tiny"]
    assert results["workloads"]["digits-32"]["n"] == 1797

    assert _positive_finite(results["peak"]["gflops"])
    for kind in ("grads", "train_step"):
        assert _positive_finite(results["grad_step"][kind]["ratio"])
    mem = results["memory"]
    assert _positive_finite(mem["peak_rss_mib"])
    assert mem["peak_rss_mib"] >= mem["baseline_rss_mib"]
    assert {t["met"] for t in results["targets"]} <= {True, False, None}
    for heading in ("| workload | contender |", "manual vs jax.grad", "Peak RSS of a fit",
                    "| target | measured | met |"):
        assert heading in printed

    saved = json.loads(out.read_text())
    assert saved["workloads"].keys() == results["workloads"].keys()
    assert saved["report"] == results["report"]


def test_cli_rejects_unknown_names(bench):
    with pytest.raises(SystemExit):
        bench.main(["--contenders", "fit_manual,nope"])
    with pytest.raises(SystemExit):
        bench.main(["--workloads", "cifar"])


def test_torch_skipped_cleanly_when_absent(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "torch_available", lambda: False)
    results = bench.main(["--size", "tiny", "--workloads", "digits-256",
                          "--contenders", "numpy,torch", "--rounds", "1", "--peak-reps", "1",
                          "--no-grad-step", "--no-memory", "--quiet"])
    assert list(results["workloads"]["digits-256"]["contenders"]) == ["numpy"]
    assert results["skipped"] == ["torch (not importable)"]
    assert "| torch |" not in capsys.readouterr().out


def test_io_load_benchmark_smoke():
    """benchmarks/io_load.py at 2 MiB, one reader, one round: it runs end to end and reports
    a positive time and a finite peak ratio (no memory assertion at this size: that is
    test_io_container's, at 128 MiB)."""
    table = _load("io_load").main(["--mib", "2", "--rounds", "1", "--readers", "mj.load npz"])
    (row,) = table.values()
    assert row["seconds"] > 0 and math.isfinite(row["peak_ratio"])
