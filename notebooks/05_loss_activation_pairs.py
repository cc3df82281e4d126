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
# # 05 · Matched loss/activation pairs, and why MSE + sigmoid learns slowly
#
# The lecture pairs each output activation with a loss ("Output Activation + Loss Function"):
# regression → identity + MSE, binary → sigmoid + (binary) cross-entropy, multiclass → softmax +
# cross-entropy. For each of these pairs the output delta collapses to the same simple form
#
# $$\delta^{(L)} = \frac{\partial L}{\partial Z^{(L)}} = \frac1N\,(\hat Y - Y),$$
#
# which is what `mj.losses.matched_delta` returns and what `mj.manual_grads` uses by default
# (`fused=True`). `fused=False` takes the general chain-rule path
# $\delta^{(L)} = \partial L/\partial\hat Y \odot f'(Z^{(L)})$ (MLDS notes, "Activation function")
# or, for softmax, the Jacobian-vector product.
#
# | § | what | source |
# |---|---|---|
# | 1 | sigmoid + BCE: $\delta = \hat y - y$ | `binary-cross-entropy-gradient.md` (last step), lecture's logistic-regression slide |
# | 2 | softmax + CE: $\delta = \hat y - y$ | lecture ("multiclass → softmax", "cross entropy") |
# | 3 | the general path breaks down at saturation, the fused one does not | — |
# | 4 | $\sigma'(z)$, and the delta of a confidently wrong prediction under MSE vs BCE | sigmoid notes step 1: $\partial C/\partial z^L = -(y - a^L)\,a^L(1-a^L)$ |
# | 5 | training curves: MSE vs BCE from the same saturated start | lecture ("Logistic regression") on `breast_cancer` |
#
# This notebook stays in float32, the library's default dtype (tolerances as in the test suite).

# %%
# Hyperparameters
SEED = 0
N, N_IN, K = 8, 4, 3  # a small random batch for the numeric checks
RTOL, ATOL = 1e-5, 1e-6  # float32 comparison tolerance
DATASET = "breast_cancer"  # binary: 30 features, labels 0/1
LEARNING_RATE = 0.5  # plain SGD, full batch: W <- W - lr * dL/dW
STEPS = 300
SATURATION = 4.0  # |W| of the deliberately wrong, confident initialisation (see section 5)

# %%
import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import mlds_jax as mj
from mlds_jax import losses
from mlds_jax.datasets import load_dataset

k_net, k_x, k_y, k_b = jax.random.split(jax.random.key(SEED), 4)
# The reference: jax.grad of the same loss (jit-compiled: faster than op-by-op differentiation).
grad_of_loss = jax.jit(jax.grad(mj.loss), static_argnums=3)


def assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y)))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b),
                               strict=True))


def random_net(output):
    params = mj.init_mlp(k_net, [N_IN, 6, K], hidden="tanh", output=output)
    return tuple(dataclasses.replace(layer, b=0.1 * jax.random.normal(k_b, layer.b.shape))
                 for layer in params)


X = jax.random.normal(k_x, (N, N_IN))

# %% [markdown]
# ## 1. Sigmoid + binary cross-entropy
#
# From `binary-cross-entropy-gradient.md`: $\dfrac{\partial\mathcal{L}}{\partial\hat y} = -\dfrac{y}{\hat y} + \dfrac{1-y}{1-\hat y}$
# (steps 1–5) and $\dfrac{\partial\hat y}{\partial z} = \hat y(1-\hat y)$, so
#
# $$\frac{\partial\mathcal L}{\partial z} = \Big[-\frac{y}{\hat y} + \frac{1-y}{1-\hat y}\Big]\hat y(1-\hat y)
# = -y(1-\hat y) + (1-y)\,\hat y = \hat y - y,$$
#
# and averaged over $m$ samples, $\dfrac{\partial\mathcal L}{\partial W_i} = \dfrac1m\sum(A^i - y)(A^{i-1})^T$,
# $\dfrac{\partial\mathcal L}{\partial b_i} = \dfrac1m\sum(A^i - y)$. The $\hat y(1-\hat y)$ of the sigmoid
# cancels the denominators of the loss: nothing in $\delta$ can vanish or blow up.
#
# Numerically, on a $4 \to 6 \to 3$ network with a sigmoid output (three independent binary targets):
# the general path, the fused path and `jax.grad` agree.

# %%
net_bce = random_net("sigmoid")
Y_bin = jax.random.bernoulli(k_y, 0.5, (N, K)).astype(jnp.float32)

general = mj.manual_grads(net_bce, X, Y_bin, "binary_cross_entropy", fused=False)
fused = mj.manual_grads(net_bce, X, Y_bin, "binary_cross_entropy", fused=True)
autodiff = grad_of_loss(net_bce, X, Y_bin, "binary_cross_entropy")
assert_trees_close(general, fused)
assert_trees_close(fused, autodiff)

delta = mj.backward_deltas(net_bce, X, Y_bin, "binary_cross_entropy")[-1]
assert_trees_close(delta, (mj.forward(net_bce, X) - Y_bin) / N)  # delta = (Y_hat - Y) / N
print(f"max |general - fused|   = {max_abs_diff(general, fused):.2e}")
print(f"max |fused - jax.grad|  = {max_abs_diff(fused, autodiff):.2e}")
print("delta(L) == (Y_hat - Y)/N  ✓")

# %% [markdown]
# ## 2. Softmax + cross-entropy
#
# Softmax couples the outputs of a row: $a_k = e^{z_k}/\sum_j e^{z_j}$ has the Jacobian
# $\dfrac{\partial a_k}{\partial z_j} = a_k(\delta_{kj} - a_j)$, i.e. $\operatorname{diag}(a) - a a^T$. With
# $\ell = -\sum_k y_k\ln a_k$, $\dfrac{\partial\ell}{\partial a_k} = -\dfrac{y_k}{a_k}$ and
#
# $$\frac{\partial\ell}{\partial z_j} = \sum_k\Big(-\frac{y_k}{a_k}\Big)a_k(\delta_{kj} - a_j)
# = -y_j + a_j\sum_k y_k = a_j - y_j\qquad\text{(each row of } Y \text{ sums to 1)}.$$
#
# `mj.activations.softmax_backward(dA, Z)` is the general Jacobian-vector product $a \odot (g - \langle g, a\rangle)$;
# the fused path skips it.

# %%
z = jnp.array([1.0, -0.5, 2.0])
a = mj.activations.softmax(z[None, :])[0]
jacobian = jax.jacobian(lambda v: mj.activations.softmax(v[None, :])[0])(z)
assert_trees_close(jacobian, jnp.diag(a) - jnp.outer(a, a))
print("softmax Jacobian == diag(a) - a a^T:\n", np.asarray(jacobian).round(4))

net_ce = random_net("softmax")
labels = jax.random.randint(k_y, (N,), 0, K)
general = mj.manual_grads(net_ce, X, labels, "cross_entropy", fused=False)
fused = mj.manual_grads(net_ce, X, labels, "cross_entropy", fused=True)
autodiff = grad_of_loss(net_ce, X, labels, "cross_entropy")
assert_trees_close(general, fused)
assert_trees_close(fused, autodiff)
delta = mj.backward_deltas(net_ce, X, labels, "cross_entropy")[-1]
assert_trees_close(delta, (mj.forward(net_ce, X) - jax.nn.one_hot(labels, K)) / N)
print(f"\nmax |general - fused|   = {max_abs_diff(general, fused):.2e}")
print(f"max |fused - jax.grad|  = {max_abs_diff(fused, autodiff):.2e}")
print("delta(L) == (softmax(Z) - onehot(y))/N  ✓")

# %% [markdown]
# ## 3. Why the fused form is also the *safe* form
#
# The general path computes $\partial L/\partial\hat y$ first, which divides by $\hat y$ and $1-\hat y$.
# Once the output saturates, $\hat y$ *rounds* to exactly 0 or 1 (in float32, $\sigma(z) = 1$ for
# $z \gtrsim 17$), and $0/0$ gives NaN, although the true $\delta = \hat y - y$ is perfectly finite.
# The fused delta never forms $1/\hat y$. (The loss *values* are computed from $Z$ with
# `softplus`/`logsumexp`, so they stay finite too.)

# %%
one_unit = (mj.Dense(W=jnp.ones((1, 1)), b=jnp.zeros(1), activation="sigmoid"),)
Z_sat = jnp.array([[20.0], [-20.0], [3.0]])  # logits; W = 1, b = 0 so Z = X
Y_sat = jnp.array([[0.0], [1.0], [1.0]])  # the first two are confidently wrong
print("y_hat   =", np.asarray(mj.forward(one_unit, Z_sat)).ravel())
print("loss    =", float(mj.loss(one_unit, Z_sat, Y_sat, "binary_cross_entropy")))
d_general = mj.backward_deltas(one_unit, Z_sat, Y_sat, "binary_cross_entropy", fused=False)[-1]
d_fused = mj.backward_deltas(one_unit, Z_sat, Y_sat, "binary_cross_entropy")[-1]
print("delta, general path:", np.asarray(d_general).ravel())
print("delta, fused path:  ", np.asarray(d_fused).ravel())
assert bool(jnp.isnan(d_general[0, 0])) and bool(jnp.all(jnp.isfinite(d_fused)))
assert_trees_close(d_fused, jax.grad(lambda Z: losses.bce_value(Z, mj.activations.sigmoid(Z), Y_sat))(Z_sat))

# %% [markdown]
# ## 4. The saturating $\sigma'(z)$ and MSE
#
# With a sigmoid output and a squared error there is nothing to cancel $\sigma'$. Per sample
# (sigmoid notes, step 1, for $C = \frac12(y-\hat y)^2$; the library's `"mse"` $=\frac1N\sum(\hat y - y)^2$
# has an extra factor 2):
#
# $$\delta_{\text{MSE}} = 2(\hat y - y)\,\sigma'(z) = 2(\hat y - y)\,\hat y(1-\hat y),\qquad
# \delta_{\text{BCE}} = \hat y - y.$$
#
# $\sigma'(z) \le \tfrac14$ everywhere and decays like $e^{-|z|}$. For a prediction that is confident and
# **wrong** ($y = 1$, $z \ll 0$, so $\hat y \approx 0$), the BCE delta is $\approx -1$, as large as it
# gets, while the MSE delta is $\approx -2\sigma'(z) \approx -2e^{-|z|}$: the worse the mistake, the
# smaller the correction. We read both deltas off `mj.backward_deltas` (one sigmoid unit with
# $W = 1$, $b = 0$, so the inputs are the logits) and compare with the formulas.

# %%
z_grid = jnp.linspace(-10.0, 10.0, 201)[:, None]
y_one = jnp.ones_like(z_grid)  # the true label is 1 everywhere
n_grid = z_grid.shape[0]
# backward_deltas averages over the batch (1/N); multiply by N for the per-sample delta.
d_mse = n_grid * mj.backward_deltas(one_unit, z_grid, y_one, "mse")[-1]
d_bce = n_grid * mj.backward_deltas(one_unit, z_grid, y_one, "binary_cross_entropy")[-1]
s = mj.activations.sigmoid(z_grid)
assert_trees_close(d_mse, 2 * (s - 1) * mj.activations.sigmoid_prime(z_grid))
assert_trees_close(d_bce, s - 1)
for z0 in (-10.0, -5.0, 0.0):
    i = int(jnp.argmin(jnp.abs(z_grid[:, 0] - z0)))
    print(f"z = {z0:5.1f}: y_hat = {float(s[i, 0]):.2e}   delta_MSE = {float(d_mse[i, 0]):+.2e}"
          f"   delta_BCE = {float(d_bce[i, 0]):+.2e}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
ax1.plot(z_grid, mj.activations.sigmoid(z_grid), label=r"$\sigma(z)$")
ax1.plot(z_grid, mj.activations.sigmoid_prime(z_grid), label=r"$\sigma'(z) = \sigma(z)(1-\sigma(z)) \leq 1/4$")
ax1.set_xlabel("z")
ax1.set_title("the sigmoid saturates: $\\sigma'(z) \\to 0$ for $|z|$ large")
ax1.legend()
ax1.grid(alpha=0.3)
ax2.semilogy(z_grid, jnp.abs(d_bce), label=r"BCE: $|\hat y - y|$")
ax2.semilogy(z_grid, jnp.abs(d_mse), label=r"MSE: $|2(\hat y - y)\,\sigma'(z)|$")
ax2.axvspan(-10, -3, color="C3", alpha=0.08, label="confident and wrong")
ax2.set_xlabel("z (true label y = 1)")
ax2.set_ylabel(r"$|\delta| = |\partial \ell / \partial z|$")
ax2.set_title("output delta of one sample")
ax2.legend(fontsize=8, loc="lower left")
ax2.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Training: MSE vs BCE from the same start
#
# Logistic regression (the lecture's $\hat y = \sigma(xw^T + b)$, one `Dense` sigmoid unit) on the
# standardised `breast_cancer` data, trained by full-batch gradient descent
# $W \leftarrow W - \alpha\,\partial L/\partial W$ (`optax.sgd`) with two losses from the **same**
# initial parameters:
#
# * **saturated start**: $w$ points *against* the data ($-$`SATURATION` × the unit vector between the
#   class means), so most samples start confidently wrong ($|z| > 5$);
# * **neutral start**: $w = 0$, $b = 0$, every $\hat y = 0.5$, where $\sigma'$ is largest.
#
# Both runs are scored with the same yardsticks, the BCE loss and the accuracy (threshold 0.5),
# evaluated after every step.

# %%
ds = load_dataset(DATASET)
Xtr, Ytr = jnp.asarray(ds.X_train), jnp.asarray(ds.targets("train"))  # Ytr: (n, 1) 0/1 floats
ytr = np.asarray(ds.y_train)
direction = Xtr[ytr == 1].mean(axis=0) - Xtr[ytr == 0].mean(axis=0)
direction = direction / jnp.linalg.norm(direction)

starts = {
    "saturated start": (mj.Dense(W=-SATURATION * direction[:, None], b=jnp.zeros(1),
                                 activation="sigmoid"),),
    "neutral start": (mj.Dense(W=jnp.zeros((ds.n_features, 1)), b=jnp.zeros(1),
                               activation="sigmoid"),),
}
z_start = Xtr @ starts["saturated start"][0].W
print(f"{ds}\nsaturated start: {float(jnp.mean(jnp.abs(z_start) > 5)):.0%} of the samples have "
      f"|z| > 5, accuracy {mj.evaluate(starts['saturated start'], Xtr, Ytr)['accuracy']:.3f}")


def train(params, loss_name):
    """Full-batch SGD; returns the BCE loss and the accuracy after each step (step 0 = start)."""
    optimizer = optax.sgd(LEARNING_RATE)
    step = mj.make_train_step(optimizer, loss_name)
    state = optimizer.init(params)
    curve = [mj.evaluate(params, Xtr, Ytr, "binary_cross_entropy")]
    for k in range(STEPS):
        # The first call validates the inputs on the host; step.jitted then skips the checks.
        params, state, _ = (step if k == 0 else step.jitted)(params, state, Xtr, Ytr)
        curve.append(mj.evaluate(params, Xtr, Ytr, "binary_cross_entropy"))
    return {k: np.array([c[k] for c in curve]) for k in ("loss", "accuracy")}


curves = {(start, loss_name): train(p0, loss_name)
          for start, p0 in starts.items() for loss_name in ("mse", "binary_cross_entropy")}


def steps_to(acc, level=0.9):
    hit = np.flatnonzero(acc >= level)
    return int(hit[0]) if hit.size else None


for (start, loss_name), c in curves.items():
    print(f"{start:16s} {loss_name:21s} accuracy: step 10 {c['accuracy'][10]:.3f}, "
          f"step 50 {c['accuracy'][50]:.3f}, end {c['accuracy'][-1]:.3f}; "
          f"steps to 90%: {steps_to(c['accuracy'])}")

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
style = {"mse": ("C1", "loss = MSE"), "binary_cross_entropy": ("C0", "loss = BCE")}
for col, start in enumerate(starts):
    for loss_name, (color, label) in style.items():
        c = curves[(start, loss_name)]
        axes[0, col].semilogy(c["loss"], color=color, label=label)
        axes[1, col].plot(c["accuracy"], color=color, label=label)
    axes[0, col].set_title(start)
    axes[0, col].set_ylabel("BCE on the training set")
    axes[1, col].set_ylabel("training accuracy")
    axes[1, col].set_xlabel("gradient step")
    axes[1, col].set_ylim(0, 1.02)
    for ax in axes[:, col]:
        ax.grid(alpha=0.3, which="both")
        ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# From the saturated start, BCE recovers within a few steps: its delta for a confidently wrong
# sample is $\approx -1$. MSE sits on a plateau for a long time, because its delta carries the factor
# $\sigma'(z) \approx e^{-|z|}$; it only escapes once the weights have crawled far enough to
# un-saturate the outputs. From the neutral start, where $\sigma'(z) = 1/4$, both losses learn
# quickly (MSE still a little slower: its delta is scaled by $2\sigma'(z) \le \tfrac12$).
# This is why the lecture pairs a sigmoid output with cross-entropy rather than MSE.

# %%
sat_mse = curves[("saturated start", "mse")]["accuracy"]
sat_bce = curves[("saturated start", "binary_cross_entropy")]["accuracy"]
assert sat_bce[30] >= 0.9 > sat_mse[30], (sat_bce[30], sat_mse[30])
n_bce, n_mse = steps_to(sat_bce), steps_to(sat_mse)
assert n_bce is not None and (n_mse is None or n_bce < n_mse), (n_bce, n_mse)
print(f"saturated start, steps to 90% training accuracy: BCE {n_bce}, MSE {n_mse}")
assert curves[("neutral start", "mse")]["accuracy"][-1] >= 0.9
