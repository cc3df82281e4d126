# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · The edge of stability: sharpness against $2/\eta$
#
# Notebook 03 answered the lecture's question *"what must the step be?"* for
# $f(x_1, x_2) = x_1^2 + x_1x_2 + 4x_2^2$: fixed-step gradient descent converges iff
# $\eta < 2/\lambda_{\max}$ of the Hessian. A quadratic's Hessian is the same everywhere, so
# that bound is all there is. A network's Hessian changes as it trains. Cohen et al. (2021),
# *Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability*, observed that
# under full-batch gradient descent the **sharpness** $\lambda_{\max}(H)$ first rises
# ("progressive sharpening") until it reaches about $2/\eta$, then **hovers there**, while the
# loss keeps going down, not monotonically but over the long run.
#
# We measure it with the public API: `mj.sharpness` (Lanczos on the hand-derived
# Hessian-vector product `mj.hvp`, equations (H1)-(H6) and (H11) of `docs/derivations.md`).

# %%
# Hyperparameters
N_TRAIN = 400  # digits rows used (full batch)
SIZES = [64, 32, 10]  # 64 pixels -> 32 tanh -> 10 outputs
HIDDEN, OUTPUT, LOSS = "tanh", "identity", "mse"  # squared error on one-hot targets
ETAS = (0.5, 2.0, 2.5)  # 2/eta = 4.0, 1.0, 0.8; eta = 3 diverges from this initialisation
STEPS = 1500  # full-batch gradient descent steps
EVERY = 25  # measure the sharpness every EVERY steps
LANCZOS_ITERS, LANCZOS_TOL = 20, 1e-3  # enough for 3 digits of lambda_max on this network
DENSITY_ITERS, DENSITY_PROBES = 80, 3  # stochastic Lanczos quadrature (section 4)
SEED = 0

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import mlds_jax as mj

t_start = time.perf_counter()

# %% [markdown]
# ## 1. The quadratic: $2/\lambda_{\max}$ is a wall
#
# For the lecture's quadratic $\lambda_{\max} = 5 + \sqrt{10}$, so $2/\lambda_{\max} = 0.245$.
# Just below, gradient descent converges; just above, it diverges, because the Hessian (the
# "sharpness") cannot change to accommodate the step.

# %%
f, x0 = mj.descent.quadratic_example, jnp.asarray([3.0, 3.0])
eta_max = mj.max_stable_step_size(f, x0)
below = mj.gradient_descent(f, x0, step_size=0.98 * eta_max, max_iter=3000)
above = mj.gradient_descent(f, x0, step_size=1.02 * eta_max, max_iter=3000)
print(
    f"2/lambda_max = {eta_max:.4f}; eta = 0.98x: {below.reason} after {below.n_iter} steps; "
    f"eta = 1.02x: {above.reason} after {above.n_iter} steps"
)
assert below.converged and not above.converged

# %% [markdown]
# ## 2. A network: full-batch gradient descent at three step sizes
#
# Digits (first `N_TRAIN` training rows), a 64-32-10 tanh network with squared error on one-hot
# targets (Cohen et al. see the effect most cleanly with squared losses). The same
# initialisation for every $\eta$; the step is the hand-derived gradient
# (`mj.core.value_and_grads`) inside one jitted update, and every `EVERY` steps we measure
# $\lambda_{\max}$ of the full-batch Hessian.

# %%
ds = mj.load_dataset("digits", seed=SEED)
X = jnp.asarray(ds.X_train[:N_TRAIN])
Y = jnp.asarray(np.eye(10, dtype=np.float32)[np.asarray(ds.y_train[:N_TRAIN])])
params0 = mj.init_mlp(jax.random.key(SEED), SIZES, hidden=HIDDEN, output=OUTPUT)


@jax.jit
def gd_step(params, eta):
    loss, grads = mj.core.value_and_grads(params, X, Y, LOSS)
    return jax.tree_util.tree_map(lambda p, g: p - eta * g, params, grads), loss


runs = {}
for eta in ETAS:
    params, key = params0, jax.random.key(SEED + 1)
    losses, sharp, at = [], [], []
    for k in range(STEPS):
        if k % EVERY == 0:
            sharp.append(
                mj.sharpness(params, X, Y, LOSS, key=key, num_iters=LANCZOS_ITERS, tol=LANCZOS_TOL)
            )
            at.append(k)
        params, loss = gd_step(params, jnp.float32(eta))
        losses.append(float(loss))
    runs[eta] = {
        "loss": np.array(losses),
        "sharpness": np.array(sharp),
        "at": np.array(at),
        "params": params,
    }
    print(
        f"eta = {eta}: 2/eta = {2 / eta:.3f}; sharpness from {sharp[0]:.3f} to {sharp[-1]:.3f} "
        f"(max {max(sharp):.3f}); loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )

# %%
fig, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
for i, (eta, r) in enumerate(runs.items()):
    axes[0].plot(r["loss"], color=f"C{i}", lw=1, label=rf"$\eta = {eta}$")
    axes[1].plot(r["at"], r["sharpness"], "o-", ms=2, color=f"C{i}", label=rf"$\eta = {eta}$")
    axes[1].axhline(2 / eta, color=f"C{i}", ls="--", lw=1)
axes[0].set_yscale("log")
axes[0].set_ylabel("training loss")
axes[1].set_ylabel(r"sharpness $\lambda_{\max}(H)$ (dashed: $2/\eta$)")
axes[1].set_xlabel("gradient descent step")
axes[1].set_ylim(0, 2.2)
for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. What the numbers say
#
# At initialisation the sharpness (about 2.0) is above $2/\eta$ for the two large steps: their
# first steps overshoot and land in a flatter region (the sharpness drops below $2/\eta$ within
# a few dozen steps). After that drop, for each run: the first measured step at which the
# sharpness comes back within 5% of $2/\eta$, and from then on the range of
# sharpness$\,\cdot\,\eta/2$ (1 = exactly at the edge).

# %%
summary = {}
for eta, r in runs.items():
    ratio = r["sharpness"] * eta / 2
    below = int(np.argmax(ratio < 0.95))  # the end of the initial transient
    hit = below + np.nonzero(ratio[below:] >= 0.95)[0]
    first = int(r["at"][hit[0]]) if hit.size else None
    after = ratio[hit[0] :] if hit.size else np.array([])
    summary[eta] = (first, after)
    if first is None:
        print(f"eta = {eta}: sharpness stays below 2/eta (max {ratio.max():.3f} of it)")
    else:
        print(
            f"eta = {eta}: reaches 0.95 * 2/eta at step {first}; from then on "
            f"sharpness*eta/2 in [{after.min():.3f}, {after.max():.3f}] for the remaining "
            f"{STEPS - first} steps"
        )

# small step: a stable run; the sharpness stays at or below half of 2/eta = 4 and the loss
# falls monotonically
assert summary[0.5][0] is None and runs[0.5]["sharpness"].max() <= 0.51 * 2 / 0.5
assert np.all(np.diff(runs[0.5]["loss"][10:]) <= 0)
# the two large steps: the sharpness rises to 2/eta and hovers within ±10% of it for the rest
for eta in (2.0, 2.5):
    first, after = summary[eta]
    assert first is not None and first <= STEPS // 2, (eta, first)
    assert after.min() >= 0.9 and after.max() <= 1.1, (eta, after.min(), after.max())
    # ... while the loss still goes down over the long run (not monotonically)
    loss = runs[eta]["loss"]
    assert loss[-1] < loss[first]
    assert np.any(np.diff(loss[first:]) > 0)
print(f"total time {time.perf_counter() - t_start:.1f} s")

# %% [markdown]
# **Finding.** With $\eta = 0.5$ ($2/\eta = 4$) the sharpness drifts from 2.0 down to 1.2-1.4, far below
# the stability bound, and the loss decreases monotonically: the classical regime. With
# $\eta = 2.0$ and $2.5$ the sharpness first drops (the first steps are larger than $2/\lambda$
# allows and throw the network to a flatter region) and then rises steadily until it meets
# $2/\eta$ (1.0 and 0.8); from then on it stays within ±10% of $2/\eta$ for the rest of the
# run. Measured here (float32, CPU): $\eta = 2.0$ reaches $0.95\cdot 2/\eta$ at step 375 and
# then stays in $[0.96, 1.05]\cdot 2/\eta$ for the remaining 1125 steps; $\eta = 2.5$ reaches
# it at step 150 and stays in $[0.97, 1.09]\cdot 2/\eta$ for 1350 steps. Meanwhile the loss
# keeps decreasing, with small non-monotone bumps. Unlike the quadratic, the network does not diverge when $\lambda_{\max}$ reaches
# $2/\eta$: gradient descent itself keeps the sharpness at the edge of stability. A step size
# chosen as $2/\lambda_{\max}$ at initialisation (`mj.extensions.network_max_stable_step_size`) therefore
# says little about the sharpness later in training, which adapts to the step.

# %% [markdown]
# ## 4. The whole spectrum: where does $\lambda_{\max}$ sit?
#
# The sharpness is one eigenvalue out of $P = 2410$. `mj.hessian_spectral_density` estimates
# all of them at once by stochastic Lanczos quadrature (equation (H17)): from a random unit
# probe $v$, $m$ Lanczos steps give a tridiagonal $T_m = U\,\mathrm{diag}(\theta)\,U^T$, and the
# nodes $\theta_i$ with weights $\tau_i = U_{1i}^2$ integrate any smooth $g$ against the density
# $\phi(t) = \frac1P\sum_j \delta(t - \lambda_j)$: $\sum_i \tau_i g(\theta_i) \approx
# \frac1P\sum_j g(\lambda_j)$. `mj.extensions.smoothed_density` widens each node into a Gaussian for a
# plot (log scale: the bulk near zero holds almost all the mass). Below, the Hessian at
# initialisation and after the $\eta = 2$ run, which ended at the edge of stability.

# %%
density = {}
for name, p in (("initialisation", params0), ("after eta = 2.0", runs[2.0]["params"])):
    nodes, weights = mj.hessian_spectral_density(
        p, X, Y, LOSS, key=jax.random.key(SEED + 2), num_iters=DENSITY_ITERS,
        num_probes=DENSITY_PROBES,
    )  # fmt: skip
    lam = mj.sharpness(p, X, Y, LOSS, key=jax.random.key(SEED + 3), tol=1e-6)
    density[name] = (np.asarray(nodes), np.asarray(weights), lam)
    print(
        f"{name}: largest node {float(nodes.max()):.4f}, lambda_max {lam:.4f}; "
        f"weight within 0.05 of zero {float(jnp.sum(weights * (jnp.abs(nodes) < 0.05))) / DENSITY_PROBES:.3f}"
    )

grid = np.linspace(-0.5, 2.2, 600)
plt.figure(figsize=(8, 3.5))
for i, (name, (nodes, weights, lam)) in enumerate(density.items()):
    phi = mj.extensions.smoothed_density(nodes, weights, grid, sigma=0.01)
    plt.semilogy(grid, np.maximum(np.asarray(phi), 1e-6), color=f"C{i}", label=name)
    plt.axvline(lam, color=f"C{i}", ls=":", lw=1)
plt.axvline(2 / 2.0, color="gray", ls="--", lw=1, label=r"$2/\eta$ for $\eta = 2$")
plt.xlabel("eigenvalue")
plt.ylabel("density (smoothed)")
plt.legend()
plt.tight_layout()
plt.show()

# %%
for name, (nodes, weights, lam) in density.items():
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-4)  # each probe's weights
    assert abs(nodes.max() - lam) <= 1e-2 * lam, (name, nodes.max(), lam)  # the top is found
    assert float((weights * (np.abs(nodes) < 0.05)).sum()) / DENSITY_PROBES > 0.5  # bulk at 0
print(f"total time {time.perf_counter() - t_start:.1f} s")

# %% [markdown]
# **The spectrum.** Almost all of the density sits in a narrow bulk around zero; a handful of
# outliers stand apart, and the largest of them is the sharpness of sections 2-3 (dotted lines:
# `mj.sharpness`). After the $\eta = 2$ run the top outlier sits at $2/\eta = 1$: gradient
# descent has pushed exactly one direction to the edge of stability and left the bulk alone.

