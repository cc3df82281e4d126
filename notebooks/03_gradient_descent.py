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
# # 03 · Gradient descent and the step size
#
# `lecture-forward-backward-training.md`, "Influence of step size example (constant step size)":
#
# $$f(x_1, x_2) = x_1^2 + x_1x_2 + 4x_2^2,\qquad x^{\text{initial}} = \begin{bmatrix}3\\3\end{bmatrix},\qquad \eta = 0.1 \text{ and } \eta = 0.2,$$
#
# minimised by fixed-step gradient descent ("The Approach of Gradient Descent", multivariate):
#
# $$x^{k+1} = x^k - \eta\,\nabla f(x^k)^T,$$
#
# stopped by either of the lecture's "Gradient descent convergence criteria"
# $|f(x^{k+1}) - f(x^k)| < \varepsilon_1$ or $\lVert\nabla f(x^k)\rVert < \varepsilon_2$.
#
# `mj.gradient_descent(f, x0, step_size, tol_f=ε1, tol_grad=ε2, max_iter)` runs the loop on device
# (`jax.lax.while_loop`) and returns the final `x`, `f`, `n_iter`, `converged`, the whole `path`
# and `f_path`, and the stop `reason`. `mj.descent.quadratic_example` is the lecture's $f$ and
# `mj.max_stable_step_size` answers the lecture's question *"what must step be?"*: $2/\lambda_{\max}$.
#
# We add a third step size just past that bound, and explain why $\eta = 0.2$ is the fastest.

# %%
# Hyperparameters
X0 = [3.0, 3.0]  # the lecture's x^initial
ETAS = (0.1, 0.2, 0.26)  # the lecture's two step sizes, and one past 2 / lambda_max ~ 0.245
TOL_F = 1e-10  # epsilon_1: stop when |f(x^{k+1}) - f(x^k)| < TOL_F
TOL_GRAD = 1e-8  # epsilon_2: stop when ||grad f(x^k)|| < TOL_GRAD
MAX_ITER = 500

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 so f can be followed down to ~1e-20

import mlds_jax as mj

f = mj.descent.quadratic_example
x0 = jnp.asarray(X0)
print("f(x0) =", float(f(x0)), "  grad f(x0) =", jax.grad(f)(x0))

# %% [markdown]
# ## 1. Run the three step sizes
#
# The gradient is $\nabla f = [\,2x_1 + x_2,\ x_1 + 8x_2\,]$; `jax.grad` computes it inside the loop.

# %%
runs = {eta: mj.gradient_descent(f, x0, step_size=eta, tol_f=TOL_F, tol_grad=TOL_GRAD,
                                 max_iter=MAX_ITER) for eta in ETAS}
print(f"{'eta':>5} {'n_iter':>7} {'reason':>9} {'converged':>10} {'f(x)':>12}  x")
for eta, r in runs.items():
    print(f"{eta:5.2f} {r.n_iter:7d} {r.reason:>9} {r.converged!s:>10} {r.f:12.3e}  "
          f"{np.asarray(r.x).round(6)}")

assert runs[0.1].converged and runs[0.2].converged
assert runs[0.2].n_iter < runs[0.1].n_iter  # 0.2 is faster
assert not runs[0.26].converged and runs[0.26].reason == "diverged"

# %% [markdown]
# $\eta = 0.26$ blows up: `gradient_descent` rejects the step once $|f|$ exceeds
# $10^{12}(1 + |f(x^0)|)$ and reports `reason="diverged"` with the last finite iterate.
#
# ## 2. Trajectories on the contour plot
#
# The gradient is perpendicular to the level curves (lecture, "Gradient"). With $\eta = 0.1$ the
# iterates creep along the shallow valley; with $\eta = 0.2$ they zig-zag across it but reach the
# minimum in half the steps; with $\eta = 0.26$ the zig-zag grows.

# %%
g1, g2 = np.meshgrid(np.linspace(-4.5, 4.5, 300), np.linspace(-4, 4, 300))
F = g1**2 + g1 * g2 + 4 * g2**2
colors = {0.1: "C0", 0.2: "C2", 0.26: "C3"}
n_show = 8  # steps of the divergent run to draw before it leaves the frame

fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
for ax, (eta, r) in zip(axes, runs.items(), strict=True):
    ax.contour(g1, g2, F, levels=np.geomspace(0.05, 120, 14), cmap="Greys", linewidths=0.8)
    path = r.path if r.converged else r.path[: n_show + 1]
    ax.plot(path[:, 0], path[:, 1], "o-", color=colors[eta], ms=3, lw=1.2)
    ax.plot(*X0, "ks", label="$x^0 = (3, 3)$")
    ax.plot(0, 0, "k*", ms=12, label="minimum")
    status = f"{r.n_iter} steps, {r.reason}" if r.converged else f"first {n_show} steps, diverges"
    ax.set_title(rf"$\eta = {eta}$: {status}")
    ax.set_xlim(-4.5, 4.5)
    ax.set_ylim(-4, 4)
    ax.set_xlabel("$x_1$")
    ax.set_aspect("equal")
axes[0].set_ylabel("$x_2$")
axes[0].legend(loc="lower left")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. $f(x^k)$ against $k$ (log scale)

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for eta, r in runs.items():
    ax.semilogy(np.arange(r.n_iter + 1), r.f_path, "o-", ms=2.5, color=colors[eta],
                label=rf"$\eta = {eta}$ ({r.reason})")
ax.set_xlabel("iteration $k$")
ax.set_ylabel("$f(x^k)$")
ax.set_xlim(0, 80)
ax.set_ylim(1e-12, 1e6)
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# ## 4. Why $\eta = 0.2$ converges fastest
#
# $f(x) = \tfrac12 x^T H x$ with the constant Hessian $H = \begin{bmatrix}2 & 1\\ 1 & 8\end{bmatrix}$,
# so $\nabla f(x) = Hx$ and one step is $x^{k+1} = (I - \eta H)\,x^k$. Write $x^k$ in the
# eigenvectors $v_i$ of $H$ ($Hv_i = \lambda_i v_i$): $x^k = \sum_i c_i^k v_i$. Then
#
# $$c_i^{k+1} = (1 - \eta\lambda_i)\,c_i^k,\qquad
# \lambda_{\min,\max} = \frac{\operatorname{tr}H \mp \sqrt{(\operatorname{tr}H)^2 - 4\det H}}{2}
# = \frac{10 \mp \sqrt{100 - 60}}{2} = 5 \mp \sqrt{10} \approx 1.838,\ 8.162.$$
#
# * Every direction contracts iff $|1 - \eta\lambda_i| < 1$ for all $i$, i.e.
#   $\eta < 2/\lambda_{\max} = 2/(5+\sqrt{10}) \approx 0.245$ (`mj.max_stable_step_size`). At
#   $\eta = 0.26$: $1 - 0.26\cdot 8.162 = -1.122$, so the steep direction grows by 12% a step with
#   alternating sign — the growing zig-zag.
# * The slowest direction sets the speed: the rate is $\rho(\eta) = \max_i |1 - \eta\lambda_i|$.
#   For $\eta = 0.1$: $\max(0.816, 0.184) = 0.816$, dominated by the *shallow* direction.
#   Increasing $\eta$ speeds up the shallow direction and slows (then flips) the steep one; the
#   best trade-off equalises them, $1 - \eta\lambda_{\min} = -(1 - \eta\lambda_{\max})$:
#
# $$\eta^* = \frac{2}{\lambda_{\min} + \lambda_{\max}} = \frac{2}{\operatorname{tr}H} = \frac{2}{10} = 0.2,
# \qquad \rho(\eta^*) = \frac{\lambda_{\max} - \lambda_{\min}}{\lambda_{\max} + \lambda_{\min}} = \frac{\sqrt{10}}{5} \approx 0.632.$$
#
# So the lecture's $\eta = 0.2$ is *exactly* the optimal fixed step for this $f$: both eigen-directions
# shrink by $|1 - 0.2\lambda_i| = 0.632$ per step, and $f$ (quadratic in $x$) by $0.632^2 = 0.4$,
# against $0.816^2 = 0.666$ for $\eta = 0.1$.

# %%
H = jax.hessian(f)(x0)
lam, V = jnp.linalg.eigh(H)
print("H =\n", np.asarray(H), "\neigenvalues:", np.asarray(lam), " 5 -/+ sqrt(10) =",
      5 - np.sqrt(10), 5 + np.sqrt(10))
np.testing.assert_allclose(lam, [5 - np.sqrt(10), 5 + np.sqrt(10)], rtol=1e-12)

eta_max = mj.max_stable_step_size(f, x0)
eta_opt = 2 / float(lam.sum())
print(f"2/lambda_max = {eta_max:.4f}   2/(lambda_min + lambda_max) = {eta_opt:.4f}")
np.testing.assert_allclose(eta_max, 2 / (5 + np.sqrt(10)), rtol=1e-12)
np.testing.assert_allclose(eta_opt, 0.2, rtol=1e-12)

# The measured per-direction contraction: coordinates of the path in the eigenbasis.
print(f"\n{'eta':>5} {'1 - eta*lam_min':>16} {'1 - eta*lam_max':>16} {'rho':>7}   measured c^(k+1)/c^k")
for eta, r in runs.items():
    C = np.asarray(r.path) @ np.asarray(V)  # c_i^k = v_i . x^k
    measured = C[1:4] / C[:3]  # first three steps
    factors = 1 - eta * np.asarray(lam)
    np.testing.assert_allclose(measured, np.broadcast_to(factors, measured.shape), rtol=1e-9)
    print(f"{eta:5.2f} {factors[0]:16.4f} {factors[1]:16.4f} {np.abs(factors).max():7.4f}   "
          f"{measured[0].round(4)}")

# %%
etas = np.linspace(0.0, 0.3, 301)
lam_np = np.asarray(lam)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(etas, np.abs(1 - etas * lam_np[0]), label=r"$|1-\eta\lambda_{\min}|$ (shallow direction)")
ax.plot(etas, np.abs(1 - etas * lam_np[1]), label=r"$|1-\eta\lambda_{\max}|$ (steep direction)")
ax.plot(etas, np.abs(1 - np.outer(etas, lam_np)).max(axis=1), "k--", lw=1,
        label=r"rate $\rho(\eta) = \max_i |1-\eta\lambda_i|$")
ax.axhline(1, color="grey", lw=0.8)
ax.axvline(eta_opt, color="C2", ls=":", label=rf"$\eta^* = 2/(\lambda_{{\min}}+\lambda_{{\max}}) = {eta_opt:.3f}$")
ax.axvline(eta_max, color="C3", ls=":", label=rf"$2/\lambda_{{\max}} = {eta_max:.3f}$")
for eta in ETAS:
    ax.plot(eta, np.abs(1 - eta * lam_np).max(), "o", color=colors[eta])
ax.set_xlabel(r"step size $\eta$")
ax.set_ylabel("contraction per step")
ax.set_ylim(0, 1.7)
ax.legend(fontsize=8, loc="upper left")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The measured decay of $f$ matches the predicted rate $\rho^2$ per step:

# %%
for eta in (0.1, 0.2):
    fp = runs[eta].f_path
    rho = np.abs(1 - eta * lam_np).max()
    observed = (fp[20] / fp[10]) ** (1 / 10)
    print(f"eta = {eta}: f shrinks by {observed:.4f} per step (predicted rho^2 = {rho**2:.4f})")
    np.testing.assert_allclose(observed, rho**2, rtol=1e-3)

# %% [markdown]
# ## 5. The two convergence criteria
#
# The lecture stops when **either** $|f(x^{k+1}) - f(x^k)| < \varepsilon_1$ **or**
# $\lVert\nabla f(x^k)\rVert < \varepsilon_2$. Setting one tolerance to 0 disables that rule, so we
# can see when each one alone would stop the $\eta = 0.1$ run. Both $|\Delta f|$ and
# $\lVert\nabla f\rVert$ decay geometrically; which one fires first depends on the two thresholds.

# %%
eta = 0.1
only_f = mj.gradient_descent(f, x0, step_size=eta, tol_f=TOL_F, tol_grad=0.0, max_iter=MAX_ITER)
only_g = mj.gradient_descent(f, x0, step_size=eta, tol_f=0.0, tol_grad=TOL_GRAD, max_iter=MAX_ITER)
both = runs[eta]
print(f"|df| < {TOL_F:g} only:      n_iter = {only_f.n_iter:3d}, reason = {only_f.reason}, "
      f"||grad|| there = {only_f.grad_norm:.2e}")
print(f"||grad|| < {TOL_GRAD:g} only:   n_iter = {only_g.n_iter:3d}, reason = {only_g.reason}, "
      f"f there = {only_g.f:.2e}")
print(f"either (the lecture):   n_iter = {both.n_iter:3d}, reason = {both.reason}")
assert (only_f.reason, only_g.reason) == ("tol_f", "tol_grad")
assert both.n_iter == min(only_f.n_iter, only_g.n_iter)

path = only_g.path
df = np.abs(np.diff(np.asarray(only_g.f_path)))  # |f(x^{k+1}) - f(x^k)|, k = 0..n-1
gn = np.linalg.norm(np.asarray(jax.vmap(jax.grad(f))(jnp.asarray(path))), axis=1)  # ||grad f(x^k)||

fig, ax = plt.subplots(figsize=(7, 4))
ax.semilogy(np.arange(1, len(df) + 1), df, label=r"$|f(x^{k}) - f(x^{k-1})|$")
ax.semilogy(np.arange(len(gn)), gn, label=r"$\|\nabla f(x^k)\|$")
ax.axhline(TOL_F, color="C0", ls=":", label=rf"$\varepsilon_1$ = {TOL_F:g}")
ax.axhline(TOL_GRAD, color="C1", ls=":", label=rf"$\varepsilon_2$ = {TOL_GRAD:g}")
ax.axvline(only_f.n_iter, color="C0", lw=0.8)
ax.axvline(only_g.n_iter, color="C1", lw=0.8)
ax.set_xlabel("iteration $k$")
ax.set_title(rf"$\eta = {eta}$: each criterion alone")
ax.legend()
ax.grid(alpha=0.3, which="both")
plt.show()

# %% [markdown]
# ## 6. The lecture's "trivial algorithm"
#
# Before the gradient rule the lecture moves by a fixed amount against the *sign* of the
# derivative, $x^{k+1} = x^k - \operatorname{sign}(f'(x^k))\cdot\text{step}$. It ignores how steep
# $f$ is, so it cannot settle closer than one step to the minimum. With step 0.4 from $(3, 3)$,
# `mj.descent.sign_gradient_descent` (element-wise sign) walks down the diagonal and then jumps between
# $(0.2, 0.2)$ and $(-0.2, -0.2)$, where $f$ is equal, so $|\Delta f| = 0 < \varepsilon_1$ stops it
# at $f = 0.24$ instead of 0.

# %%
sign_run = mj.descent.sign_gradient_descent(f, x0, step_size=0.4, max_iter=100)
print(f"sign descent: n_iter = {sign_run.n_iter}, reason = {sign_run.reason}, "
      f"x = {np.asarray(sign_run.x)}, f = {sign_run.f:.4f}")
print("last iterates:\n", np.asarray(sign_run.path[-4:]))
assert sign_run.reason == "tol_f" and sign_run.f > 0.1

# %% [markdown]
# ## 7. "Many solutions to choosing step size $\eta^k$"
#
# `mj.gradient_descent` takes `step_size=` as a float, an optax schedule or any callable of $k$,
# and `line_search="exact"` or `"armijo"`:
#
# * **exact line search** along $-g$: minimise the local quadratic model
#   $f(x - \eta g) \approx f(x) - \eta\, g^Tg + \tfrac12\eta^2 g^THg$, so
#   $\eta^k = g^Tg / g^THg$ (equation (S1) of `docs/derivations.md`), with $Hg$ from
#   `jax.jvp(jax.grad(f))`; exact here since $f$ is quadratic;
# * the **optimal fixed step** $\eta^* = 2/(\lambda_{\min} + \lambda_{\max})$ (S4), which is 0.2 here;
# * **Armijo backtracking** (S3): start at $\eta_0$ and halve until
#   $f(x - \eta g) \le f(x) - c\,\eta\,\lVert g\rVert^2$; started at $\eta_0 = 1$ (four times past
#   $2/\lambda_{\max}$) it still converges;
# * a **schedule**, $\eta^k = 0.24 \cdot 0.9^{k/10}$ (optax `exponential_decay`).
#
# Same tolerance for all, $\lVert\nabla f\rVert < 10^{-8}$:

# %%
import optax

rules = {
    "fixed 0.1": dict(step_size=0.1),
    "fixed 0.2": dict(step_size=0.2),
    "optimal 2/(lmin+lmax)": dict(step_size=eta_opt),
    "exact line search": dict(line_search="exact"),
    "armijo from 1.0": dict(step_size=1.0, line_search="armijo", armijo_c=1e-4,
                            armijo_shrink=0.5),
    "schedule 0.24*0.9^(k/10)": dict(step_size=optax.exponential_decay(0.24, 10, 0.9)),
}
compare = {name: mj.gradient_descent(f, x0, tol_f=0.0, tol_grad=TOL_GRAD, max_iter=MAX_ITER, **kw)
           for name, kw in rules.items()}
print(f"{'rule':>26} {'n_iter':>7} {'reason':>9}  first step sizes")
for name, r in compare.items():
    print(f"{name:>26} {r.n_iter:7d} {r.reason:>9}  {np.asarray(r.step_sizes[:4]).round(4)}")

n = {name: r.n_iter for name, r in compare.items()}
assert all(r.converged for r in compare.values())
assert n["exact line search"] < n["optimal 2/(lmin+lmax)"] <= n["fixed 0.2"] < n["fixed 0.1"]
assert abs(n["optimal 2/(lmin+lmax)"] - n["fixed 0.2"]) <= 1  # 0.2 *is* the optimal fixed step
# exact steps are gTg/gTHg: between 1/lambda_max and 1/lambda_min
steps = compare["exact line search"].step_sizes
assert np.all((steps >= 1 / lam_np[1] - 1e-12) & (steps <= 1 / lam_np[0] + 1e-12))

# %% [markdown]
# The exact line search wins: it picks a new $\eta^k$ each step (alternating between 0.125
# and 0.5 here, both allowed because each is chosen for the current gradient), while every
# fixed step is bounded by the worst direction (Armijo from 1.0 happens to halve to the same
# two values, 1/8 and 1/2). The same rule works for a network, with the
# hand-derived Hessian-vector product `mj.hvp` in place of `jax.jvp(jax.grad(f))`:
# `mj.extensions.network_exact_step_size(params, X, Y, loss)` returns $g^Tg/g^THg$ and
# `mj.extensions.network_max_stable_step_size(params, X, Y, loss)` returns $2/\lambda_{\max}$ (Lanczos on
# `mj.hvp`). Notebook 07 follows $\lambda_{\max}$ during training.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, r in compare.items():
    ax.semilogy(np.arange(r.n_iter + 1), np.maximum(r.f_path, 1e-30), "-", label=name)
ax.set_xlabel("iteration $k$")
ax.set_ylabel("$f(x^k)$")
ax.set_ylim(1e-20, 1e3)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()
