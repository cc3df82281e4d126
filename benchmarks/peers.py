r"""Shared harness of the extension benchmarks: the problem, the PyTorch peers, interleaved timing.

The peers (BackPACK, Opacus, PyHessian, ``torch.func``) are optional: ``pip install
'mlds-jax[peers]'`` in a separate environment (they move torch to another build); without them
``available()`` is False and the benchmarks print our rows alone.  Nothing here is imported by
the test suite's package code.

Fairness: the same 784-512-256-10 relu/softmax network and the same weights on both sides
(torch's Linear weight is our Wᵀ), float32, 2 threads each side (``torch.set_num_threads(2)``;
XLA:CPU uses the machine's 2 cores), each side's public API as its users call it, values
cross-checked up to each peer's scale convention before timing, and the two sides timed in
interleaved rounds in one process (order alternated every round), medians reported.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import mlds_jax as mj

SIZES = {"full": [784, 512, 256, 10], "tiny": [64, 32, 10]}
LOSS = "cross_entropy"


def problem(sizes: list[int], batch: int, seed: int = 0):
    """(params, X (N, n_in) float32, y labels (N,), Y one-hot (N, K), v like params)."""
    rng = np.random.default_rng(seed)
    params = mj.init_mlp(jax.random.key(seed), sizes, "relu", "softmax", dtype=jnp.float32)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    Y = np.eye(sizes[-1], dtype=np.float32)[y]
    v = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params
    )
    return params, jnp.asarray(X), y, jnp.asarray(Y), v


def gemm_limit(n: int = 2048, reps: int = 5) -> float:
    """XLA's float32 GEMM speed on this machine, FLOP/s (median of ``reps`` n×n products)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def forward_flops(sizes: list[int], N: int) -> tuple[float, float]:
    """(2N Σ d_in d_out over all layers, the same without the first layer)."""
    per = [2 * N * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return float(sum(per)), float(sum(per[1:]))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, reps: int = 1) -> dict:
    """Median seconds per call of each zero-arg fn over interleaved rounds (order rotated)."""
    for fn in fns.values():
        _block(fn())
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(reps):
                out = fns[n]()
            _block(out)
            samples[n].append((time.perf_counter() - t0) / reps)
    return {n: statistics.median(s) for n, s in samples.items()}


def _block(out):
    # torch tensors and Python numbers are ready when returned
    with contextlib.suppress(Exception):
        jax.block_until_ready(out)


# --- the peers --------------------------------------------------------------------------------
def available() -> dict[str, bool]:
    """Which peers import here."""
    found = {}
    for name in ("torch", "backpack", "opacus", "pyhessian"):
        try:
            __import__(name)
            found[name] = True
        except Exception:
            found[name] = False
    return found


class Torch:
    """The same network and batch in PyTorch (weights copied: torch's weight = our Wᵀ)."""

    def __init__(self, params, X, y):
        import torch

        torch.set_num_threads(2)
        self.torch = torch
        layers = []
        for i, layer in enumerate(params):
            lin = torch.nn.Linear(layer.W.shape[0], layer.W.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.asarray(layer.W).T.copy()))
                lin.bias.copy_(torch.from_numpy(np.asarray(layer.b).copy()))
            layers.append(lin)
            if i < len(params) - 1:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        self.X = torch.from_numpy(np.asarray(X).copy())
        self.y = torch.from_numpy(np.asarray(y).astype(np.int64))
        self.criterion = torch.nn.CrossEntropyLoss()

    def fresh(self):
        """A copy of the network: each peer installs its own hooks on its own copy."""
        import copy

        return copy.deepcopy(self.model)

    # per-example norms
    def backpack_l2(self):
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad

        model, crit = extend(self.fresh()), extend(self.torch.nn.CrossEntropyLoss())
        N = self.X.shape[0]

        def run():
            model.zero_grad()
            loss = crit(model(self.X), self.y)
            with backpack(BatchL2Grad()):
                loss.backward()
            # batch_l2 is of the 1/N-scaled per-example gradients of the mean loss
            return N * self.torch.sqrt(sum(p.batch_l2 for p in model.parameters()))

        return run

    def func_norms(self):
        from torch.func import functional_call, grad, vmap

        model, crit = self.fresh(), self.criterion
        names = {k: v.detach() for k, v in model.named_parameters()}

        def one(p, x, t):
            out = functional_call(model, p, (x[None],))
            return crit(out, t[None])

        g = vmap(grad(one), in_dims=(None, 0, 0))

        def run():
            gs = g(names, self.X, self.y)
            return self.torch.sqrt(sum((v.flatten(1) ** 2).sum(1) for v in gs.values()))

        return run

    def opacus_norms(self):
        from opacus import GradSampleModule

        gsm = GradSampleModule(self.fresh(), loss_reduction="mean")

        def run():
            gsm.zero_grad()
            self.criterion(gsm(self.X), self.y).backward()
            return self.torch.sqrt(
                sum((p.grad_sample.flatten(1) ** 2).sum(1) for p in gsm.parameters())
            )

        return run

    def opacus_dp_step(self, clip: float, sigma: float):
        import warnings

        from opacus import PrivacyEngine

        warnings.filterwarnings("ignore")
        torch = self.torch
        model = self.fresh()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        data = torch.utils.data.TensorDataset(self.X, self.y)
        loader = torch.utils.data.DataLoader(data, batch_size=len(self.X))
        engine = PrivacyEngine()
        model, opt, _ = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=clip,
        )  # fmt: skip

        def run():
            opt.zero_grad()
            self.criterion(model(self.X), self.y).backward()
            opt.step()
            return None

        return run

    # curvature
    def double_backward_hvp(self, v):
        torch = self.torch
        vt = [torch.from_numpy(np.asarray(a).T.copy() if a.ndim == 2 else np.asarray(a).copy())
              for layer in v for a in (layer.W, layer.b)]  # fmt: skip
        model = self.fresh()
        params = list(model.parameters())

        def run():
            loss = self.criterion(model(self.X), self.y)
            g = torch.autograd.grad(loss, params, create_graph=True)
            return torch.autograd.grad(g, params, grad_outputs=vt)

        return run

    def backpack_second_order(self, kind: str):
        from backpack import backpack, extend
        from backpack.extensions import KFLR, DiagGGNExact

        model, crit = extend(self.fresh()), extend(self.torch.nn.CrossEntropyLoss())
        ext, attr = (DiagGGNExact(), "diag_ggn_exact") if kind == "diag" else (KFLR(), "kflr")

        def run():
            model.zero_grad()
            loss = crit(model(self.X), self.y)
            with backpack(ext):
                loss.backward()
            return [getattr(p, attr) for p in model.parameters()]

        return run

    def pyhessian(self, what: str, **kw):
        from pyhessian import hessian

        torch = self.torch

        # PyHessian's density calls torch.eig, removed in torch 2 (it raises): the shim gives its
        # (eigenvalues as (real, imag) columns, eigenvectors) from torch.linalg.eigh on the
        # symmetric tridiagonal T
        def eig(T, eigenvectors=True):
            vals, vecs = torch.linalg.eigh(T)
            return torch.stack([vals, torch.zeros_like(vals)], 1), vecs

        torch.eig = eig

        model = self.fresh()

        def run():
            model.zero_grad()
            h = hessian(model, self.criterion, data=(self.X, self.y), cuda=False)
            return getattr(h, what)(**kw)

        return run
