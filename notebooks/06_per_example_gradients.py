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
# # 06 · Per-example gradients, gradient noise and DP-SGD
#
# `jax.grad` gives the gradient of the *batch* loss. The hand-derived backward gives more: for
# every layer it holds the layer input $A^{(l-1)}$ and the output gradient $\delta^{(l)}$ **row by
# row**, and the batch gradient $\partial L/\partial W = A^{(l-1)T}\delta^{(l)}$ is a sum of one
# outer product per example. Each of those is an example's own gradient, and their norms, inner
# products and moments come out without ever building $N$ copies of the parameters
# (`docs/derivations.md`, equations (P1)-(P6) and (D1)-(D3)).
#
# | § | what | API |
# |---|---|---|
# | 1 | the row-by-row derivation next to the code | `mj.per_example_grads`, `mj.per_example_grad_norms` |
# | 2 | which digits have the largest gradient norms, and why | `mj.per_example_grad_norms` |
# | 3 | gradient noise over a short training | `mj.gradient_moments` |
# | 4 | DP-SGD on digits: accuracy against ε | `mj.make_train_step(dp=...)`, `mj.extensions.dp_epsilon` |
# | 5 | which training digits helped or hurt a misclassified test digit | `mj.extensions.gradient_cross_gram` |

# %%
# Hyperparameters
SEED = 0
HIDDEN = 32  # digits: 64 -> HIDDEN -> 10, tanh hidden layer, softmax output
LR = 0.1  # plain SGD
BATCH = 64
EPOCHS = 8  # plain training (sections 2 and 3)
DP_EPOCHS = 8  # DP-SGD training per noise level (section 4)
DP_LR = 0.5  # DP-SGD: larger steps, since clipped and averaged gradients are small
CLIP = 1.0  # C: every example's gradient is clipped to norm <= C
SIGMAS = (1.0, 1.5, 2.5)  # noise multipliers: three points on the accuracy/epsilon curve
DELTA = 1e-5  # epsilon is reported at this delta
N_SHOW = 6  # digits shown in sections 2 and 5

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import mlds_jax as mj

data = mj.load_dataset("digits", seed=SEED)
X_train, y_train = jnp.asarray(data.X_train), jnp.asarray(data.y_train)
X_test, y_test = jnp.asarray(data.X_test), jnp.asarray(data.y_test)
n_train = X_train.shape[0]
LOSS = "cross_entropy"
params0 = mj.init_mlp(jax.random.key(SEED), [64, HIDDEN, 10], hidden="tanh", output="softmax")
print(f"digits: {n_train} training rows, {X_test.shape[0]} test rows; params float32")


def train_plain(params, epochs, on_epoch=None):
    """Plain minibatch SGD with the hand-derived gradients (public API only)."""
    opt = optax.sgd(LR)
    step = mj.make_train_step(opt, LOSS)
    state = opt.init(params)
    rng = np.random.default_rng(SEED)
    for epoch in range(epochs):
        order = rng.permutation(n_train)
        for i in range(0, n_train, BATCH):
            idx = order[i : i + BATCH]
            params, state, _ = step(params, state, X_train[idx], y_train[idx])
        if on_epoch is not None:
            on_epoch(epoch, params)
    return params


# %% [markdown]
# ## 1. The row-by-row derivation next to the code
#
# The MLDS notes ("Fully connected layer") give $\partial L/\partial W = A^{(l-1)T}\delta^{(l)}$,
# i.e. entry $(i, j)$ is $\sum_n a_{ni}\,\delta_{nj}$: one term per row $n$. With the default mean
# loss, $\delta^{(L)}_n = \frac1N\hat\delta_n$ where $\hat\delta_n = \hat y_n - y_n$ is example $n$'s
# own output gradient (L6), and every later backward step acts on each row separately, so
#
# $$\nabla_{W^{(l)}}\ell_n = a_n^{T}\hat\delta_n,\qquad \nabla_{b^{(l)}}\ell_n = \hat\delta_n
# \qquad\text{(P2)},\qquad
# \|\nabla_{W^{(l)}}\ell_n\|^2 + \|\nabla_{b^{(l)}}\ell_n\|^2 = (\|a_n\|^2 + 1)\|\hat\delta_n\|^2
# \qquad\text{(P3)}.$$
#
# The norm of an outer product is the product of the norms (Goodfellow, 2015): the norms need
# only $N\cdot\sum_l \text{width}_l$ numbers, not the $N\cdot|\theta|$ of `jax.vmap(jax.grad(...))`.
# Below: the library against `vmap(grad)` of the one-example loss, and the headline identity
# "the batch gradient is the mean of the per-example gradients".

# %%
Xb, yb = X_train[:16], y_train[:16]
g = mj.per_example_grads(params0, Xb, yb, LOSS)  # like params, leading axis 16


def one_example_loss(params, x, y):
    return mj.loss(params, x[None, :], y[None], LOSS)


g_ref = jax.vmap(jax.grad(one_example_loss), in_axes=(None, 0, 0))(params0, Xb, yb)
for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 tolerance of the suite

mean_of_rows = jax.tree_util.tree_map(lambda x: x.mean(axis=0), g)
batch = mj.manual_grads(params0, Xb, yb, LOSS)
for a, b in zip(
    jax.tree_util.tree_leaves(mean_of_rows), jax.tree_util.tree_leaves(batch), strict=True
):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

norms = mj.per_example_grad_norms(params0, Xb, yb, LOSS)
norms_ref = jnp.sqrt(
    sum(jnp.sum(x.reshape(16, -1) ** 2, axis=1) for x in jax.tree_util.tree_leaves(g_ref))
)
np.testing.assert_allclose(norms, norms_ref, rtol=1e-5)
print("per-example grads == vmap(grad); mean of rows == manual_grads; norms (P3) == ‖vmap(grad)‖")
print("norms of the first 5 rows:", np.round(np.asarray(norms[:5]), 4))

# %% [markdown]
# ## 2. Which digits have the largest gradient norms?
#
# After a few epochs of plain SGD, the per-example norms over the training set. For softmax +
# cross-entropy the output factor is $\|\hat\delta_n\| = \|\hat y_n - y_n\|$, which is about
# $\sqrt 2$ for a confidently wrong prediction and near 0 for a confidently right one; the hidden
# layer's input norm $\|a_n\|$ changes much less from digit to digit. So the largest norms
# belong to the misclassified and ambiguous digits: the examples the network currently gets
# wrong dominate the batch gradient.

# %%
params = train_plain(params0, EPOCHS)
norms = np.asarray(mj.per_example_grad_norms(params, X_train, y_train, LOSS))
Y_hat = np.asarray(mj.forward(params, X_train))
pred = Y_hat.argmax(axis=1)
p_true = Y_hat[np.arange(n_train), np.asarray(y_train)]
wrong = pred != np.asarray(y_train)
print(f"train accuracy after {EPOCHS} epochs: {1 - wrong.mean():.3f}")
print(
    f"mean gradient norm: misclassified {norms[wrong].mean():.3f}, "
    f"correct {norms[~wrong].mean():.3f} ({wrong.sum()} vs {(~wrong).sum()} rows)"
)
corr = np.corrcoef(norms, 1 - p_true)[0, 1]
print(f"correlation of ‖∇ℓ_n‖ with 1 − p(true class): {corr:.3f}")

top = np.argsort(norms)[::-1][:N_SHOW]
raw = np.asarray(data.X_train) * np.asarray(data.std) + np.asarray(data.mean)
fig, axes = plt.subplots(1, N_SHOW, figsize=(2 * N_SHOW, 2.4))
for ax, i in zip(axes, top, strict=True):
    ax.imshow(raw[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"y={int(y_train[i])} ŷ={pred[i]}\n‖∇ℓ‖={norms[i]:.2f}", fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %%
# Findings, with numbers: the misclassified rows' gradients are several times larger, and the
# norm tracks how wrong the prediction is.
assert norms[wrong].mean() > 3 * norms[~wrong].mean()
assert corr > 0.8
assert wrong[top].mean() >= 0.5  # most of the largest norms belong to misclassified digits

# %% [markdown]
# ## 3. Gradient noise over a short training
#
# `mj.gradient_moments` gives, per parameter entry, the mean $\bar g = \frac1N\sum_n\nabla\ell_n$
# (the full-batch gradient) and the variance $\frac1N\sum_n(\nabla\ell_n - \bar g)^2$ (P6), from
# $(A\odot A)^T(\hat\delta\odot\hat\delta)$ (P5). A minibatch gradient of size $B$ has variance
# $\operatorname{tr}\Sigma / B$ around $\bar g$; the ratio
# $B_{\text{noise}} = \operatorname{tr}\Sigma / \|\bar g\|^2$ (McCandlish et al., 2018, "the simple
# noise scale") says at which batch size the noise matches the signal. As training proceeds the
# mean gradient shrinks faster than the per-example spread: the noise scale grows.

# %%
noise_scale = []


def record(epoch, p):
    m = mj.gradient_moments(p, X_train, y_train, LOSS)
    signal = sum(float(jnp.sum(x**2)) for x in jax.tree_util.tree_leaves(m.mean))
    trace = sum(float(jnp.sum(x)) for x in jax.tree_util.tree_leaves(m.variance))
    noise_scale.append((epoch, signal, trace, trace / signal))


record(-1, params0)
train_plain(params0, EPOCHS, on_epoch=record)
print("epoch   ‖ḡ‖²       tr Σ     B_noise")
for epoch, signal, trace, b in noise_scale:
    print(f"{epoch + 1:5d}  {signal:9.5f}  {trace:8.4f}  {b:8.1f}")
plt.figure(figsize=(5, 3))
plt.semilogy([e + 1 for e, *_ in noise_scale], [b for *_, b in noise_scale], "o-")
plt.xlabel("epoch")
plt.ylabel("tr Σ / ‖ḡ‖²")
plt.title("gradient noise scale on digits")
plt.tight_layout()
plt.show()

# %%
assert noise_scale[-1][3] > 5 * noise_scale[0][3]  # the noise scale grows during training
assert noise_scale[-1][1] < noise_scale[0][1]  # while the mean gradient shrinks

# %% [markdown]
# ## 4. DP-SGD on digits: accuracy against ε
#
# DP-SGD (Abadi et al., 2016) clips every example's gradient to norm $\le C$ with Opacus's
# factor $\kappa_n = \min(1, C/(\|\nabla\ell_n\| + 10^{-6}))$ (D1), using the norms of §1, then
# gets $\sum_n\kappa_n\nabla\ell_n$ from **one more backward pass with row weights** $\kappa_n$
# (ghost clipping, (D2): no per-example gradient is formed), adds Gaussian noise
# $\mathcal N(0, \sigma^2C^2)$ and divides by the batch size (D3). The privacy spent, $\varepsilon$
# at $\delta$, comes from the RDP accountant of Google's `dp-accounting` (`mj.extensions.dp_epsilon`). The
# accountant assumes Poisson sampling of each batch with rate $q = B/N$; like most tutorials we
# train on shuffled fixed-size batches, so the ε below is the usual approximation.


# %%
def train_dp(sigma):
    opt = optax.sgd(DP_LR)
    step = mj.make_train_step(opt, LOSS, dp=mj.DPSGD(l2_clip=CLIP, noise_multiplier=sigma))
    params, state = params0, opt.init(params0)
    rng = np.random.default_rng(SEED)
    key = jax.random.key(SEED + 1)
    steps = 0
    for _ in range(DP_EPOCHS):
        order = rng.permutation(n_train)
        for i in range(0, n_train - BATCH + 1, BATCH):  # full batches only
            key, k = jax.random.split(key)
            params, state, _ = step(
                params, state, X_train[order[i : i + BATCH]], y_train[order[i : i + BATCH]], key=k
            )
            steps += 1
    return params, steps


results = []
for sigma in SIGMAS:
    p, steps = train_dp(sigma)
    eps = mj.extensions.dp_epsilon(sigma, BATCH / n_train, steps, DELTA)
    acc = float(mj.evaluate(p, X_test, y_test, LOSS)["accuracy"])
    results.append((sigma, eps, acc))
p_clip, _ = train_dp(0.0)  # clipping only, no noise: no privacy (ε = ∞)
acc_clip = float(mj.evaluate(p_clip, X_test, y_test, LOSS)["accuracy"])
acc_plain = float(mj.evaluate(params, X_test, y_test, LOSS)["accuracy"])
print(f"steps per run: {steps}, q = {BATCH / n_train:.4f}, δ = {DELTA}")
print("   σ      ε(δ)   test accuracy")
for sigma, eps, acc in results:
    print(f"{sigma:4.1f}  {eps:7.2f}   {acc:.3f}")
print(f"clip only (σ = 0, ε = ∞): {acc_clip:.3f}; plain SGD: {acc_plain:.3f}")
plt.figure(figsize=(5, 3))
plt.semilogx([e for _, e, _ in results], [a for *_, a in results], "o-", label="DP-SGD")
plt.axhline(acc_plain, color="gray", ls="--", label="plain SGD")
plt.xlabel(f"ε at δ = {DELTA}")
plt.ylabel("test accuracy")
plt.legend()
plt.tight_layout()
plt.show()

# %%
epsilons = [e for _, e, _ in results]
assert epsilons == sorted(epsilons, reverse=True)  # more noise, less privacy spent
assert results[0][2] > 0.8  # the least private run still learns digits well
assert acc_plain >= results[-1][2]  # privacy costs accuracy at the most private setting

# %% [markdown]
# ## 5. Which training digits helped, and which hurt, a misclassified test digit?
#
# One SGD step of size $\eta$ on training example $i$ moves the parameters by $-\eta\nabla\ell_i$,
# so to first order the loss of a test example $j$ changes by $-\eta\,\langle\nabla\ell_j,
# \nabla\ell_i\rangle$ (equation (P8); TracIn, Pruthi et al. 2020). A large positive inner
# product marks a **helpful** training example (a step on it lowers the test loss), a large
# negative one a **harmful** one. `mj.extensions.gradient_cross_gram` gives the whole (training × test)
# matrix of these inner products by the ghost identity of (P4), $\sum_l (a_i\cdot a_j + 1)
# (\hat\delta_i\cdot\hat\delta_j)$, without forming a single per-example gradient. Below: a test
# digit the plainly trained network of §2 gets wrong, against the whole training set.

# %%
pred = np.asarray(mj.predict(params, X_test))
wrong = np.nonzero(pred != np.asarray(y_test))[0]
j = int(wrong[0])
C = mj.extensions.gradient_cross_gram(params, X_train, y_train, X_test[j : j + 1], y_test[j : j + 1], LOSS)
scores = np.asarray(C[:, 0])  # (n_train,)
helpful = np.argsort(-scores)[:N_SHOW]
harmful = np.argsort(scores)[:N_SHOW]
print(f"test digit {j}: label {int(y_test[j])}, predicted {int(pred[j])}")
print("most helpful training digits (label, score):", [(int(y_train[i]), round(float(scores[i]), 3)) for i in helpful])
print("most harmful training digits (label, score):", [(int(y_train[i]), round(float(scores[i]), 3)) for i in harmful])

fig, axes = plt.subplots(2, N_SHOW + 1, figsize=(1.4 * (N_SHOW + 1), 3.2))
for row, (title, idx) in enumerate((("helpful", helpful), ("harmful", harmful))):
    axes[row, 0].imshow(np.asarray(X_test[j]).reshape(8, 8), cmap="gray_r")
    axes[row, 0].set_title(f"test: {int(y_test[j])}→{int(pred[j])}", fontsize=8)
    for k, i in enumerate(idx, start=1):
        axes[row, k].imshow(np.asarray(X_train[i]).reshape(8, 8), cmap="gray_r")
        axes[row, k].set_title(f"{title}: {int(y_train[i])}", fontsize=8)
for ax in axes.ravel():
    ax.axis("off")
plt.tight_layout()
plt.show()

# %%
# the inner products are those of the materialised per-example gradients (vmap(grad) of §1)
check = np.concatenate([helpful, harmful])
g_train = jax.vmap(jax.grad(one_example_loss), in_axes=(None, 0, 0))(params, X_train[check], y_train[check])
g_test = jax.grad(one_example_loss)(params, X_test[j], y_test[j])
ref = sum(
    jnp.sum(a.reshape(len(check), -1) * b.reshape(1, -1), axis=1)
    for a, b in zip(jax.tree_util.tree_leaves(g_train), jax.tree_util.tree_leaves(g_test), strict=True)
)
np.testing.assert_allclose(scores[check], ref, rtol=1e-4, atol=1e-6)
assert scores[helpful[0]] > 0 > scores[harmful[0]]
# the most helpful digits mostly carry the test digit's true label
assert np.mean(np.asarray(y_train)[helpful] == int(y_test[j])) >= 0.5
# ... and the most harmful ones mostly the class it was wrongly predicted as
assert np.mean(np.asarray(y_train)[harmful] == int(pred[j])) >= 0.5

# %% [markdown]
# **Reading it.** The most helpful training digits are mostly of the test digit's true class:
# stepping on them moves the network toward the right answer for it. The most harmful ones are
# mostly of the class it was wrongly predicted as (or look like the test digit but carry
# another label): stepping on them pushes the network further toward the mistake. The same
# matrix over a whole test set gives data valuation (sum a column's scores over many test
# digits) at the cost of two matrix products per layer.

