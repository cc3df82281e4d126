r"""Training-speed benchmark of ``mlds_jax.fit`` against the usual baselines, in one process.

Run ``make bench`` (= ``.venv/bin/python benchmarks/run.py``) for the full table, or
``benchmarks/run.py --size tiny`` for a quick smoke run.  ``benchmarks/README.md`` explains the
columns and the methodology; in short:

* every contender trains the same MLP (float32, relu hidden layers, softmax + mean
  cross-entropy, plain SGD with lr 0.01, no momentum) on the same data;
* the contenders of a workload run in **interleaved rounds**: round 0 is a warm-up (JIT
  compilation, allocations) and is not part of the statistics; in every following round each
  contender trains exactly one epoch, in an order rotated from round to round; the table
  reports the median over the rounds (and the IQR and the minimum);
* ``fit`` is measured through its public API: one ``mj.fit(..., epochs=R + 1)`` call per
  contender and workload runs in a helper thread and is paused between epochs inside its
  ``on_epoch_end`` callback, so the other contenders run between its epochs; the epoch time
  is ``history["time"]`` of that epoch (the compiled epoch call plus reading its metrics),
  and the pause is not part of it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import whole_call  # noqa: E402
from numpy_mlp import NumpyMLP, one_hot  # noqa: E402

LR = 0.01
N_CLASSES = 10
DIGITS_SIZES = [64, 128, 64, 10]
MNIST_SIZES = [784, 512, 256, 10]
MNIST_ROWS = {"full": 60000, "tiny": 2000}

WORKLOADS = {  # name -> (data set, layer sizes, batch size)
    "digits-32": ("digits", DIGITS_SIZES, 32),
    "digits-256": ("digits", DIGITS_SIZES, 256),
    "mnist-128": ("mnist", MNIST_SIZES, 128),
    "mnist-1024": ("mnist", MNIST_SIZES, 1024),
}

CONTENDERS = {  # name -> label in the table
    "fit_manual": 'mj.fit grads="manual"',
    "fit_autodiff": 'mj.fit grads="autodiff"',
    "step_loop": "Python loop over make_train_step(...).jitted",
    "numpy": "NumPy (benchmarks/numpy_mlp.py)",
    "sklearn": "scikit-learn MLPClassifier",
    "torch": "PyTorch eager",
}
JAX_CONTENDERS = ("fit_manual", "fit_autodiff", "step_loop")
REFERENCE = "fit_manual"  # the "speed-up" column is every other contender against this one


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- data ------------------------------------------------------------------------------------
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """The real sklearn digits (1797 × 64), standardised per feature (constant pixels → 0)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.data.astype(np.float64)
    std = X.std(axis=0)
    X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return X.astype(np.float32), d.target.astype(np.int64)


def mnist_like_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-size synthetic data: (n, 784) standard-normal float32, random labels 0..9."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 784), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
    return X, y


def train_flops_per_sample(sizes: Sequence[int]) -> int:
    """2·fan_in·fan_out per layer for the forward matmul, the same for dW, and the same for dX
    except at the first layer (no gradient w.r.t. the inputs).  Bias adds, activations and the
    optimizer update are not counted."""
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))
    mm = [2 * a * b for a, b in layers]
    return 2 * sum(mm) + sum(mm[1:])


@dataclasses.dataclass
class Workload:
    name: str
    data: str
    sizes: list[int]
    batch_size: int
    X: np.ndarray
    y: np.ndarray
    Y1h: np.ndarray  # one-hot float32

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def flops_per_epoch(self) -> int:
        return train_flops_per_sample(self.sizes) * self.n


# --- contenders ------------------------------------------------------------------------------
class Contender:
    """One way of training a workload; ``run_epoch()`` trains one epoch, returns its seconds."""

    name = ""

    def __init__(self, wl: Workload, total_epochs: int):
        self.wl = wl
        self.total_epochs = total_epochs
        self.extra: dict[str, Any] = {}

    def run_epoch(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _jax_params(sizes, seed: int = 0):
    import jax
    import jax.numpy as jnp

    import mlds_jax as mj

    return mj.init_mlp(jax.random.key(seed), sizes, hidden="relu", output="softmax",
                       dtype=jnp.float32)


class _AbortError(Exception):
    """Raised inside fit's callback to end a fit the harness no longer needs."""


class FitContender(Contender):
    """``mj.fit`` via its public API, one epoch per ``run_epoch``, paused in ``on_epoch_end``.

    A single ``fit(..., epochs=total_epochs)`` call runs in a helper thread.  ``run_epoch``
    lets it run one epoch and waits for the callback; the callback hands back
    ``metrics["time"]`` (what ``history["time"]`` records) and blocks until the next
    ``run_epoch``.  So the compilation happens once (in the first epoch, round 0) and fit's own
    per-epoch timing is used; the thread switch is outside the measured time.
    """

    def __init__(self, wl: Workload, total_epochs: int, grads: str):
        super().__init__(wl, total_epochs)
        self.name = f"fit_{grads}"
        self.grads = grads
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._epoch_time: float | None = None
        self._epochs_done = 0
        self._error: BaseException | None = None
        self._finished = False
        self._abort = False
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        import jax
        import optax

        import mlds_jax as mj

        try:
            self._go.acquire()
            wl = self.wl
            mj.fit(_jax_params(wl.sizes), wl.X, wl.y, loss="cross_entropy",
                   optimizer=optax.sgd(LR), epochs=self.total_epochs,
                   batch_size=wl.batch_size, key=jax.random.key(1), grads=self.grads,
                   progress=False, on_epoch_end=self._callback)
        except _AbortError:
            pass
        except BaseException as exc:  # re-raised in the main thread
            self._error = exc
        finally:
            self._finished = True
            self._done.release()

    def _callback(self, epoch: int, metrics: dict) -> None:
        self._epoch_time = float(metrics["time"])
        self._epochs_done = epoch + 1
        self._done.release()
        if epoch + 1 < self.total_epochs:
            self._go.acquire()
            if self._abort:
                raise _AbortError

    def run_epoch(self) -> float:
        before = self._epochs_done
        t0 = time.perf_counter()
        self._go.release()
        self._done.acquire()
        wall = time.perf_counter() - t0
        if self._error is not None:
            raise RuntimeError(f"{self.name}: fit raised") from self._error
        if self._epochs_done != before + 1:
            raise RuntimeError(f"{self.name}: fit stopped after {self._epochs_done} epochs "
                               f"(of {self.total_epochs}); did training diverge?")
        if before == 0:  # input checks, one-hot, device transfer: fit's one-off setup
            self.extra["setup_s"] = wall - self._epoch_time
        return self._epoch_time

    def close(self) -> None:
        if not self._finished:  # the harness stopped early: end fit at its next callback
            self._abort = True
            self._go.release()
        self._thread.join(timeout=60)


class StepLoopContender(Contender):
    """A user's loop: host-side shuffle and slicing, one ``TrainStep.jitted`` call per batch.

    The NumPy batches are passed straight to the jitted step (jit transfers them); the loop
    does not synchronise per step, only once at the end of the epoch."""

    name = "step_loop"

    def __init__(self, wl: Workload, total_epochs: int):
        super().__init__(wl, total_epochs)
        import optax

        import mlds_jax as mj

        opt = optax.sgd(LR)
        self.step = mj.make_train_step(opt, "cross_entropy", grads="manual").jitted
        self.params = _jax_params(wl.sizes)
        self.state = opt.init(self.params)
        self.rng = np.random.default_rng(1)

    def run_epoch(self) -> float:
        import jax

        wl, step = self.wl, self.step
        X, Y, bs = wl.X, wl.Y1h, wl.batch_size
        t0 = time.perf_counter()
        perm = self.rng.permutation(wl.n)
        p, s = self.params, self.state
        for start in range(0, wl.n, bs):
            idx = perm[start:start + bs]
            p, s, m = step(p, s, X[idx], Y[idx])
        jax.block_until_ready((p, s, m))
        float(m["loss"])
        elapsed = time.perf_counter() - t0
        self.params, self.state = p, s
        return elapsed


class NumpyContender(Contender):
    name = "numpy"

    def __init__(self, wl: Workload, total_epochs: int):
        super().__init__(wl, total_epochs)
        self.model = NumpyMLP(wl.sizes, seed=0)
        self.rng = np.random.default_rng(1)

    def run_epoch(self) -> float:
        t0 = time.perf_counter()
        self.model.epoch(self.wl.X, self.wl.Y1h, self.wl.batch_size, LR, self.rng)
        return time.perf_counter() - t0


class SklearnContender(Contender):
    """``MLPClassifier.partial_fit``: one shuffled SGD epoch per call (input validation,
    per-batch loss and sklearn's bookkeeping included, as a user gets them)."""

    name = "sklearn"

    def __init__(self, wl: Workload, total_epochs: int):
        super().__init__(wl, total_epochs)
        from sklearn.neural_network import MLPClassifier

        self.model = MLPClassifier(
            hidden_layer_sizes=tuple(wl.sizes[1:-1]), activation="relu", solver="sgd",
            momentum=0.0, nesterovs_momentum=False, learning_rate="constant",
            learning_rate_init=LR, batch_size=wl.batch_size, max_iter=1, alpha=0.0,
            shuffle=True, random_state=0, tol=0.0,
        )
        self.classes = np.arange(N_CLASSES)
        self.first = True

    def run_epoch(self) -> float:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            if self.first:
                self.model.partial_fit(self.wl.X, self.wl.y, classes=self.classes)
                self.first = False
            else:
                self.model.partial_fit(self.wl.X, self.wl.y)
            return time.perf_counter() - t0


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


class TorchContender(Contender):
    """PyTorch eager on CPU: nn.Sequential of Linear/ReLU, CrossEntropyLoss, optim.SGD; the
    data live in tensors, each epoch indexes them with a fresh randperm."""

    name = "torch"

    threads: int | None = None  # None: one per core

    def __init__(self, wl: Workload, total_epochs: int):
        super().__init__(wl, total_epochs)
        import torch

        torch.set_num_threads(self.threads or n_cores())
        torch.manual_seed(0)
        layers: list[Any] = []
        for i, (a, b) in enumerate(zip(wl.sizes[:-1], wl.sizes[1:], strict=True)):
            layers.append(torch.nn.Linear(a, b))
            if i < len(wl.sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.0)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.X = torch.from_numpy(wl.X)
        self.y = torch.from_numpy(wl.y)
        self.gen = torch.Generator().manual_seed(1)

    def run_epoch(self) -> float:
        import torch

        model, opt, loss_fn, bs, n = self.model, self.opt, self.loss_fn, self.wl.batch_size, \
            self.wl.n
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=self.gen)
        total = torch.zeros(())
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(self.X[idx]), self.y[idx])
            loss.backward()
            opt.step()
            total += loss.detach() * idx.shape[0]
        float(total)
        return time.perf_counter() - t0


def make_contender(name: str, wl: Workload, total_epochs: int) -> Contender:
    if name == "fit_manual":
        return FitContender(wl, total_epochs, "manual")
    if name == "fit_autodiff":
        return FitContender(wl, total_epochs, "autodiff")
    if name == "step_loop":
        return StepLoopContender(wl, total_epochs)
    if name == "numpy":
        return NumpyContender(wl, total_epochs)
    if name == "sklearn":
        return SklearnContender(wl, total_epochs)
    if name == "torch":
        return TorchContender(wl, total_epochs)
    raise ValueError(name)


# --- compile time, from JAX's own monitoring events -------------------------------------------
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """Sums JAX's tracing / lowering / XLA-compile durations into ``CompileClock.sink``.

    The harness points ``sink`` at the running contender's dict, so every compilation that
    happens while a contender runs (in whichever thread) is charged to it."""

    sink: dict[str, float] | None = None
    _registered = False

    @classmethod
    def install(cls) -> None:
        if not cls._registered:
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(cls._listener)
            cls._registered = True

    @classmethod
    def _listener(cls, event: str, duration: float, **kwargs) -> None:
        sink = cls.sink
        if sink is not None and event in COMPILE_EVENTS:
            key = event.rsplit("/", 1)[-1]
            sink[key] = sink.get(key, 0.0) + float(duration)


# --- statistics ------------------------------------------------------------------------------
def summarize(times: Sequence[float]) -> dict[str, float]:
    a = np.asarray(times, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(a.min()), "max": float(a.max())}


SETTLE_S = 0.02  # idle gap between contenders: lets spinning BLAS/OpenMP worker threads sleep


def run_workload(wl: Workload, contenders: Sequence[str], rounds: int, burst: int,
                 log: Callable[[str], None]) -> dict[str, dict]:
    """Round 0 (warm-up) + ``rounds`` timed rounds, interleaved, order rotated per round.

    In every round each contender trains ``burst`` epochs back to back.  With ``burst`` > 1
    the first epoch of a burst only re-warms (thread pools asleep after the 20 ms gap, caches
    holding the previous contender's data) and the round's value is the median of the
    others; with ``burst`` = 1 it is the single epoch.
    """
    objs = {name: make_contender(name, wl, (rounds + 1) * burst) for name in contenders}
    epochs: dict[str, list[list[float]]] = {name: [] for name in contenders}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    compiles: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    CompileClock.install()
    try:
        for r in range(rounds + 1):
            order = list(contenders)
            k = r % len(order)
            order = order[k:] + order[:k]
            for name in order:
                gc.collect(1)  # young generations only: a full collection takes ~0.1 s here
                time.sleep(SETTLE_S)
                compiles[name].append({})
                CompileClock.sink = compiles[name][-1]
                try:
                    ts = [objs[name].run_epoch() for _ in range(burst)]
                finally:
                    CompileClock.sink = None
                epochs[name].append(ts)
                times[name].append(ts[0] if r == 0 or burst == 1
                                   else float(np.median(ts[1:])))
            log(f"  {wl.name} round {r}/{rounds}: "
                + ", ".join(f"{n}={times[n][-1] * 1e3:.1f}ms" for n in contenders))
    finally:
        for obj in objs.values():
            obj.close()
    out = {}
    for name in contenders:
        first, steady = times[name][0], times[name][1:]
        st = summarize(steady)
        res = {
            "epoch_s": st,
            "first_epoch_s": first,
            "samples_per_s": wl.n / st["median"],
            "gflops": wl.flops_per_epoch / st["median"] / 1e9,
            "times_s": times[name],
            "epochs_s": epochs[name],
            **objs[name].extra,
        }
        if burst > 1:  # the cost of the first (cold) epoch of a burst, median over rounds
            res["cold_epoch_s"] = float(np.median([ts[0] for ts in epochs[name][1:]]))
        if name in JAX_CONTENDERS:
            # tracing + lowering + XLA compilation while the contender ran its round 0, as
            # reported by jax.monitoring; later rounds should compile nothing
            res["compile_s"] = sum(compiles[name][0].values())
            res["compile_phases_s"] = compiles[name][0]
            res["recompile_s"] = sum(sum(c.values()) for c in compiles[name][1:])
            res["first_minus_median_s"] = first - st["median"]
        out[name] = res
    return out


# --- matmul peak -----------------------------------------------------------------------------
def matmul_times(reps: int, n: int = 2048) -> dict[str, list[float]]:
    """Seconds per n³ float32 matmul, NumPy (its BLAS) and jitted JAX, one warm-up each."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out: dict[str, list[float]] = {"numpy": [], "jax": []}
    a @ b
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(jnp.matmul)
    mm(ja, jb).block_until_ready()
    for _ in range(reps):  # interleaved too
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        a @ b
        out["numpy"].append(time.perf_counter() - t0)
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        mm(ja, jb).block_until_ready()
        out["jax"].append(time.perf_counter() - t0)
    return out


def peak_summary(samples: dict[str, list[float]], n: int = 2048) -> dict[str, Any]:
    flop = 2.0 * n ** 3
    per = {k: flop / float(np.median(v)) / 1e9 for k, v in samples.items() if v}
    best = max(per, key=per.get)
    return {"gflops": per[best], "best": best, "per_library_gflops": per, "n": n,
            "reps": {k: len(v) for k, v in samples.items()}}


# --- manual vs jax.grad ----------------------------------------------------------------------
def grad_step_comparison(n_rows: int, batch: int, reps: int) -> dict[str, Any]:
    """Median step time of jitted manual vs autodiff gradients on an MNIST-size batch.

    Three pairs, timed interleaved (one call of each per repetition, ``reps`` repetitions
    after a compile call): ``grads`` = ``mj.manual_grads`` vs ``jax.grad(mj.loss)``;
    ``value_and_grads`` = the (loss, Ŷ, grads) functions a train step uses (private
    ``mlds_jax.core.value_and_grads``, manual and autodiff);
    ``train_step`` = ``make_train_step(sgd, grads=...).jitted``.
    """
    import jax
    import optax

    import mlds_jax as mj
    from mlds_jax import core

    X, y = mnist_like_data(max(n_rows, batch), seed=2)
    X = jax.device_put(X[:batch])
    Y = jax.device_put(one_hot(y[:batch], N_CLASSES))
    params = _jax_params(MNIST_SIZES)
    opt = optax.sgd(LR)
    state = opt.init(params)
    loss = "cross_entropy"
    fns: dict[str, tuple[Callable, Callable]] = {
        "grads": (
            jax.jit(lambda p, X, Y: mj.manual_grads(p, X, Y, loss)),
            jax.jit(jax.grad(lambda p, X, Y: mj.loss(p, X, Y, loss))),
        ),
    }
    fns["value_and_grads"] = (
        jax.jit(lambda p, X, Y: core.value_and_grads(p, X, Y, loss)),
        jax.jit(lambda p, X, Y: core.value_and_grads(p, X, Y, loss, method="autodiff")),
    )
    steps = {g: mj.make_train_step(opt, loss, grads=g).jitted for g in ("manual", "autodiff")}
    fns["train_step"] = (
        lambda p, X, Y: steps["manual"](p, state, X, Y),
        lambda p, X, Y: steps["autodiff"](p, state, X, Y),
    )
    out: dict[str, Any] = {"batch": batch, "reps": reps, "flops": 0}
    out["flops"] = train_flops_per_sample(MNIST_SIZES) * batch
    calls = [(kind, i, f) for kind, pair in fns.items() for i, f in enumerate(pair)]
    samples: dict[tuple[str, int], list[float]] = {(k, i): [] for k, i, _ in calls}
    compile_s: dict[tuple[str, int], float] = {}
    for kind, i, f in calls:
        t0 = time.perf_counter()
        jax.block_until_ready(f(params, X, Y))
        compile_s[kind, i] = time.perf_counter() - t0
    for r in range(reps):
        k = r % len(calls)
        for kind, i, f in calls[k:] + calls[:k]:
            t0 = time.perf_counter()
            jax.block_until_ready(f(params, X, Y))
            samples[kind, i].append(time.perf_counter() - t0)
    for kind in fns:
        man, auto = summarize(samples[kind, 0]), summarize(samples[kind, 1])
        out[kind] = {
            "manual_s": man, "autodiff_s": auto,
            "ratio": man["median"] / auto["median"],
            "ratio_min": man["min"] / auto["min"],
            "manual_first_call_s": compile_s[kind, 0],
            "autodiff_first_call_s": compile_s[kind, 1],
        }
    return out


# --- peak RSS of a fit, in a child process ---------------------------------------------------
def _rss_mib() -> dict[str, float]:
    """VmRSS / VmHWM of this process in MiB (Linux); ru_maxrss elsewhere."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":")
                    out[key] = int(val.split()[0]) / 1024
    except OSError:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20
    return out


def memory_child(n_rows: int, batch: int, epochs: int) -> None:
    """Child process: data, then one ``fit``; print peak RSS before and after as JSON."""
    import jax
    import optax

    import mlds_jax as mj

    X, y = mnist_like_data(n_rows)
    params = _jax_params(MNIST_SIZES)
    before = _rss_mib()
    t0 = time.perf_counter()
    mj.fit(params, X, y, loss="cross_entropy", optimizer=optax.sgd(LR), epochs=epochs,
           batch_size=batch, key=jax.random.key(1), progress=False)
    after = _rss_mib()
    print(json.dumps({"rows": n_rows, "batch": batch, "epochs": epochs,
                      "fit_s": time.perf_counter() - t0, "before": before, "after": after}))


def measure_fit_memory(n_rows: int, batch: int, epochs: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child",
           f"{n_rows},{batch},{epochs}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["peak_rss_mib"] = res["after"]["VmHWM"]
    res["baseline_rss_mib"] = res["before"]["VmHWM"]  # interpreter + jax + the data
    res["fit_increase_mib"] = res["peak_rss_mib"] - res["baseline_rss_mib"]
    return res


# --- report ----------------------------------------------------------------------------------
def _fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def environment() -> dict[str, Any]:
    import jax
    import sklearn

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": n_cores(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "torch": None,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch_available():
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = TorchContender.threads or n_cores()
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS"):
        env[var] = os.environ.get(var)
    return env


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def render(results: dict[str, Any]) -> str:
    env, peak = results["environment"], results["peak"]
    lines = [
        f"# mlds_jax training benchmark ({results['size']} size)",
        "",
        f"{env['cpu']}, {env['cores']} cores; jax {env['jax']} ({env['jax_backend']}), "
        f"numpy {env['numpy']}, scikit-learn {env['sklearn']}, torch {env['torch'] or 'absent'}"
        + (f" ({env['torch_threads']} threads)" if env["torch"] else "") + "; "
        f"load average at start {_loadavg(env.get('loadavg_start'))}, at end "
        f"{_loadavg(env.get('loadavg_end'))}.",
        "OPENBLAS_CORETYPE=" + str(env["OPENBLAS_CORETYPE"]) + ", OPENBLAS_L2_SIZE="
        + str(env["OPENBLAS_L2_SIZE"]) + ", XLA_FLAGS=" + str(env["XLA_FLAGS"]) + ".",
        "",
        f"float32 matmul peak (2048³, median of {max(peak['reps'].values())}): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak["per_library_gflops"].items())
        + f"; best = {peak['best']} {peak['gflops']:.1f} GFLOP/s (the '% peak' column).",
    ]
    if results.get("whole_call"):
        lines += whole_call.render(results["whole_call"])[1:]
        lines += ["", "## Steady-state epochs (inside one fit call)"]
    lines += [
        "",
        "| workload | contender | epoch ms (median) | IQR ms | min ms | samples/s | compile s "
        "| GFLOP/s | % peak | fit manual speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wname, wres in results["workloads"].items():
        ref = wres["contenders"].get(REFERENCE)
        for cname, c in wres["contenders"].items():
            st = c["epoch_s"]
            comp = f"{c['compile_s']:.2f}" if "compile_s" in c else "–"
            if ref is None or cname == REFERENCE:
                speed = "–" if ref is None else "1.00×"
            else:
                speed = f"{st['median'] / ref['epoch_s']['median']:.2f}×"
            lines.append(
                f"| {wname} (N={wres['n']}, batch {wres['batch_size']}) | {cname} "
                f"| {_fmt_ms(st['median'])} | {_fmt_ms(st['iqr'])} | {_fmt_ms(st['min'])} "
                f"| {c['samples_per_s']:,.0f} | {comp} | {_fmt(c['gflops'])} "
                f"| {100 * c['gflops'] / peak['gflops']:.1f}% | {speed} |"
            )
    lines.append("")
    lines.append("Speed-up = contender's median epoch / fit_manual's median epoch "
                 "(> 1: fit manual is faster).  Compile = JAX tracing + lowering + XLA "
                 "compilation during the contender's first round (jax.monitoring events).")
    ratios = []
    for wname, wres in results["workloads"].items():
        ref = wres["contenders"].get(REFERENCE)
        if ref is None:
            continue
        for cname, c in wres["contenders"].items():
            if cname != REFERENCE:
                ratios.append(f"{wname}: fit manual vs {cname}: "
                              f"{c['epoch_s']['median'] / ref['epoch_s']['median']:.2f}×")
    if ratios:
        lines += ["", "Ratios: " + "; ".join(ratios) + "."]
    gs = results.get("grad_step")
    if gs:
        lines += ["", f"manual vs jax.grad, MNIST-size batch {gs['batch']} "
                  f"(jitted, median of {gs['reps']}):", ""]
        for kind in ("grads", "value_and_grads", "train_step"):
            if kind in gs:
                g = gs[kind]
                lines.append(
                    f"- {kind}: manual {g['manual_s']['median'] * 1e3:.2f} ms, "
                    f"autodiff {g['autodiff_s']['median'] * 1e3:.2f} ms → manual/autodiff = "
                    f"{g['ratio']:.3f}× (of the minima: {g['ratio_min']:.3f}×; "
                    f"{gs['flops'] / g['manual_s']['median'] / 1e9:.1f} GFLOP/s manual)"
                )
    mem = results.get("memory")
    if mem:
        lines += ["", f"Peak RSS of a fit (child process: MNIST-size {mem['rows']}×784, batch "
                  f"{mem['batch']}, {mem['epochs']} epoch(s)): {mem['peak_rss_mib']:.0f} MiB "
                  f"(before fit, interpreter + jax + data: {mem['baseline_rss_mib']:.0f} MiB; "
                  f"fit's increase: {mem['fit_increase_mib']:.0f} MiB)."]
    targets = results.get("targets")
    if targets:
        lines += ["", "| target | measured | met |", "|---|---:|---|"]
        for t in targets:
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    return "\n".join(lines)


def _loadavg(la) -> str:
    return "n/a" if la is None else "/".join(f"{x:.1f}" for x in la)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's performance targets, checked against this run."""
    out: list[dict[str, Any]] = []
    W = results["workloads"]

    def med(w, c):
        try:
            return W[w]["contenders"][c]["epoch_s"]["median"]
        except KeyError:
            return None

    def add(target, value, ok, fmt):
        out.append({"target": target, "measured": "–" if value is None else fmt(value),
                    "met": None if value is None else bool(ok(value)), "value": value})

    gs = results.get("grad_step") or {}
    g = (gs.get("value_and_grads") or gs.get("grads") or {}).get("ratio")
    add("manual step ≤ 1.0× jax.grad step (MNIST, batch 1024, value-and-grads)", g,
        lambda v: v <= 1.0, lambda v: f"{v:.3f}×")
    speed_specs = [("digits-32", "torch", 8.0), ("digits-32", "sklearn", 6.0),
                   ("mnist-128", "torch", 1.4), ("mnist-1024", "torch", 1.1)]
    for w, c, need in speed_specs:
        a, b = med(w, REFERENCE), med(w, c)
        v = None if a is None or b is None else b / a
        add(f"{w}: fit epoch ≥ {need}× faster than {c}", v, lambda v, need=need: v >= need,
            lambda v: f"{v:.2f}×")
    try:
        frac = W["mnist-1024"]["contenders"][REFERENCE]["gflops"] / results["peak"]["gflops"]
    except KeyError:
        frac = None
    add("mnist-1024: fit training FLOP/s ≥ 80% of the 2048³ matmul peak", frac,
        lambda v: v >= 0.8, lambda v: f"{100 * v:.0f}%")
    comps = [wr["contenders"][REFERENCE]["compile_s"] for wr in W.values()
             if REFERENCE in wr["contenders"]]
    add("compile of a 3-layer MLP epoch < 2 s (fit manual: trace + lower + XLA, worst "
        "workload)",
        max(comps) if comps else None, lambda v: v < 2.0, lambda v: f"{v:.2f} s")
    if results.get("whole_call"):
        for target, value, met, shown in whole_call.targets(results["whole_call"]):
            out.append({"target": target, "measured": shown, "met": met, "value": value})
    mem = results.get("memory")
    add("peak RSS of an MNIST-size fit < 1.5 GB", mem["peak_rss_mib"] if mem else None,
        lambda v: v * 2 ** 20 < 1.5e9, lambda v: f"{v * 2 ** 20 / 1e9:.2f} GB")
    return out


# --- main ------------------------------------------------------------------------------------
def _csv(kind: str, valid: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in valid]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {kind} {bad}; valid: {list(valid)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="mlds_jax training-speed benchmark (see benchmarks/README.md).")
    p.add_argument("--size", choices=("full", "tiny"), default="full",
                   help="full: 60000-row MNIST-size data; tiny: 2000 rows, for a smoke test")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed rounds (one epoch per contender each) after the warm-up round "
                        "(default 5; tiny: 2)")
    p.add_argument("--digits-rounds", type=int, default=None,
                   help="timed rounds for the digits-size workloads, whose epochs take "
                        "milliseconds (default 2 × --rounds)")
    p.add_argument("--digits-burst", type=int, default=None,
                   help="epochs per contender per round for the digits-size workloads; the "
                        "first of each burst re-warms and is not counted (default 4; tiny: 2)")
    p.add_argument("--contenders", type=_csv("contender", list(CONTENDERS)),
                   default=list(CONTENDERS),
                   help="comma-separated subset of " + ",".join(CONTENDERS)
                        + " (torch is skipped when it cannot be imported)")
    p.add_argument("--workloads", type=_csv("workload", list(WORKLOADS)),
                   default=list(WORKLOADS), help="comma-separated subset of "
                                                 + ",".join(WORKLOADS))
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads for the PyTorch contender (default: the number "
                        "of cores)")
    p.add_argument("--peak-reps", type=int, default=None,
                   help="2048³ matmuls per library, half before and half after the workloads "
                        "(default 6; tiny: 2)")
    p.add_argument("--grad-reps", type=int, default=None,
                   help="repetitions of the manual-vs-jax.grad step timing (default 30; "
                        "tiny: 3)")
    p.add_argument("--no-grad-step", action="store_true",
                   help="skip the manual vs jax.grad step comparison")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-RSS measurement of a fit (child process)")
    p.add_argument("--no-whole-call", action="store_true",
                   help="skip the whole-call rows (warm fit call, 5-fold CV, mlds-jax train "
                        "twice; see benchmarks/whole_call.py)")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the markdown report, return every number as a dict."""
    args = build_parser().parse_args(argv)
    if args.memory_child:
        rows, batch, epochs = (int(v) for v in args.memory_child.split(","))
        memory_child(rows, batch, epochs)
        return {}
    tiny = args.size == "tiny"
    rounds = args.rounds if args.rounds is not None else (2 if tiny else 5)
    digits_rounds = args.digits_rounds if args.digits_rounds is not None else (
        rounds if tiny else 2 * rounds)
    digits_burst = args.digits_burst if args.digits_burst is not None else (2 if tiny else 4)
    peak_reps = args.peak_reps if args.peak_reps is not None else (2 if tiny else 6)
    grad_reps = args.grad_reps if args.grad_reps is not None else (3 if tiny else 30)
    if min(rounds, digits_rounds, digits_burst, peak_reps, grad_reps) < 1:
        raise SystemExit("--rounds, --digits-rounds, --digits-burst, --peak-reps and "
                         "--grad-reps must be >= 1")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    TorchContender.threads = whole_call.TORCH_THREADS = args.torch_threads
    contenders = list(args.contenders)
    skipped = []
    if "torch" in contenders and not torch_available():
        contenders.remove("torch")
        skipped.append("torch (not importable)")
        log("torch is not importable: skipping the PyTorch contender")
    t_start = time.perf_counter()
    results: dict[str, Any] = {"size": args.size, "rounds": rounds,
                               "digits_rounds": digits_rounds, "digits_burst": digits_burst,
                               "environment": environment(),
                               "skipped": skipped, "workloads": {}}
    phases = results["phase_s"] = {}
    log("matmul peak (first half) ...")
    first, second = (peak_reps + 1) // 2, peak_reps // 2
    t0 = time.perf_counter()
    peak_samples = matmul_times(first)
    phases["peak"] = time.perf_counter() - t0

    data_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n_mnist = MNIST_ROWS[args.size]
    for wname in args.workloads:
        dname, sizes, batch = WORKLOADS[wname]
        if dname not in data_cache:
            data_cache[dname] = digits_data() if dname == "digits" else mnist_like_data(n_mnist)
        X, y = data_cache[dname]
        wl = Workload(wname, dname, list(sizes), batch, X, y, one_hot(y, N_CLASSES))
        r = digits_rounds if dname == "digits" else rounds
        b = digits_burst if dname == "digits" else 1
        log(f"{wname}: N={wl.n}, sizes={sizes}, batch {batch}, {r} rounds + warm-up, "
            f"{b} epoch(s) per round")
        t0 = time.perf_counter()
        res = run_workload(wl, contenders, r, b, log)
        phases[wname] = time.perf_counter() - t0
        results["workloads"][wname] = {
            "n": wl.n, "sizes": list(sizes), "batch_size": batch, "rounds": r, "burst": b,
            "flops_per_sample": train_flops_per_sample(sizes), "contenders": res,
        }

    if not args.no_whole_call:
        if "digits" not in data_cache:
            data_cache["digits"] = digits_data()
        t0 = time.perf_counter()
        results["whole_call"] = whole_call.run_all(
            *data_cache["digits"], tiny=tiny, with_torch="torch" in contenders, log=log)
        phases["whole_call"] = time.perf_counter() - t0
    if not args.no_grad_step and any(c in JAX_CONTENDERS for c in contenders):
        log("manual vs jax.grad step ...")
        t0 = time.perf_counter()
        results["grad_step"] = grad_step_comparison(n_mnist, 1024, grad_reps)
        phases["grad_step"] = time.perf_counter() - t0
    if second:
        log("matmul peak (second half) ...")
        for k, v in matmul_times(second).items():
            peak_samples[k] += v
    results["peak"] = peak_summary(peak_samples)
    results["peak"]["samples_s"] = peak_samples
    if not args.no_memory:
        log("peak RSS of a fit (child process) ...")
        t0 = time.perf_counter()
        results["memory"] = measure_fit_memory(n_mnist, 128, 1)
        phases["memory"] = time.perf_counter() - t0
    results["environment"]["loadavg_end"] = (os.getloadavg() if hasattr(os, "getloadavg")
                                             else None)
    results["targets"] = evaluate_targets(results)
    results["total_s"] = time.perf_counter() - t_start
    results["report"] = render(results)
    print(results["report"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=_json_default)
    return results


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    main()
    sys.exit(0)
