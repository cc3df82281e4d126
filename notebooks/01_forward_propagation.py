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
# # 01 · Forward propagation
#
# This notebook redoes the **"Forward propagation — Code demo in PyTorch"** slides of
# `lecture-forward-backward-training.md` in JAX with `mlds_jax`, then walks the lecture's
# **5 → 7 → 4 → 3 MLP** ("Forward propagation, MLP, Efficient implementation") layer by layer.
#
# | step | source (lecture-forward-backward-training.md) | here |
# |---|---|---|
# | 1 | "Logistic regression (recap)", single sample: $z = x^T W^T + b$, $a=\sigma(z)$ | §1 |
# | 2 | "Logistic regression (recap)", batch: $z = X W^T \oplus b$, $a=\sigma(z)$ | §2 |
# | 3 | "Forward propagation, MLP": $Z^{(l)} = A^{(l-1)} W^{(l)T} + b^{(l)}$, $A^{(l)} = g_l(Z^{(l)})$ | §3–4 |
#
# **Notation.** The lecture stores a layer's weights as $W \in \mathbb{R}^{\text{out}\times\text{in}}$
# and writes $Z = X W^T + b$. `mlds_jax` (like the MLDS notes, $Z^{(1)} = XW^{(1)} + B^{(1)}$) stores
# $W \in \mathbb{R}^{\text{in}\times\text{out}}$ and computes $Z = XW + b$: **our `W` is the
# lecture's $W^T$**; every other symbol is the same.
#
# | quantity | lecture | `mlds_jax` |
# |---|---|---|
# | input batch | $X \in \mathbb{R}^{N\times n}$ | `X`, shape `(N, n_in)` |
# | weights of layer $l$ | $W^{(l)} \in \mathbb{R}^{\text{out}\times\text{in}}$ | `params[l-1].W`, shape `(in, out)` $= W^{(l)T}$ |
# | bias | $b^{(l)} \in \mathbb{R}^{1\times\text{out}}$ (broadcast, $\oplus$) | `params[l-1].b`, shape `(out,)` |
# | pre-activation | $Z^{(l)} = A^{(l-1)} W^{(l)T} + b^{(l)}$ | `Z = A_prev @ W + b` → `cache.Zs[l-1]` |
# | activation | $A^{(l)} = g_l(Z^{(l)})$, $A^{(0)} = X$ | `cache.As[l]`, `cache.As[0] = X` |

# %%
# ruff: noqa: N816  (mixed-case names on purpose: the lecture's xT)
# Hyperparameters / inputs: everything this notebook depends on.
SEED = 0  # jax.random.key for the MLP's weights (the lecture's torch.manual_seed(1) analogue)
SIZES = [5, 7, 4, 3]  # the lecture's MLP: 5 inputs, hidden 7 and 4, 3 outputs
HIDDEN, OUTPUT = "sigmoid", "softmax"  # g_1 = g_2 = sigmoid, g_3 = softmax (multiclass output)
N_BATCH = 6  # rows of the random batch in section 4
ATOL = 5e-4  # the lecture prints weights to 4 decimals, so its outputs match to ~5e-4

# The lecture's printed tensors (Out[5], Out[6], Out[2] of the two demos).
W_LECTURE = [[0.7576, 0.2793, 0.4031, 0.7347, 0.0293]]  # shape (1, 5) = (out, in)
B_LECTURE = [0.7999]
X_SINGLE = [[-8.0, 1.0, -3.0, 5.0, 2.0]]  # x^T, shape (1, 5)
X_BATCH = [[-8.0, 1.0, -3.0, 5.0, 2.0], [-2.0, 2.0, -1.0, 5.0, 2.0], [7.0, 1.0, 9.0, -5.0, -2.0]]
# The lecture's printed results (Out[9] and Out[10]).
Z_EXPECTED = [[-2.4591], [3.1721], [6.2782]]
A_EXPECTED = [[0.0788], [0.9598], [0.9981]]

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import mlds_jax as mj

print("jax", jax.__version__, "| mlds_jax", mj.__version__, "| device", jax.devices()[0])

# %% [markdown]
# ## 1. One sample: logistic regression as a one-layer network
#
# Lecture, "Logistic regression (recap)":
#
# $$x^T \in \mathbb{R}^{1\times n},\qquad z = x^T W^T + b \in \mathbb{R}^{1\times 1},\qquad
# a = \sigma(z) = \frac{1}{1+e^{-z}} \in \mathbb{R}^{1\times 1}.$$
#
# The PyTorch demo draws `W = torch.rand(5).view(1, 5)` and `b = torch.rand(1)`; we type in
# the printed values instead of reproducing PyTorch's generator. A logistic regression is a
# single `mj.Dense` layer with a sigmoid activation; we give it the lecture's weights
# **transposed** to `(5, 1)`.

# %%
W_lec = jnp.asarray(W_LECTURE)  # (1, 5): the lecture's (out, in) layout
W = W_lec.T  # (5, 1): ours, (in, out)
b = jnp.asarray(B_LECTURE)  # (1,)
logreg = mj.Dense(W=W, b=b, activation="sigmoid")

xT = jnp.asarray(X_SINGLE)  # (1, 5): a horizontal vector, like xT.view(1, 5)
z, a = mj.core.dense_forward(logreg, xT)  # z = x^T W + b (= x^T W_lec^T + b), a = sigmoid(z)
print("xT.shape", xT.shape, "| W_lec.shape", W_lec.shape, "-> our W.shape", W.shape)
print("z.shape", z.shape, " z =", z)
print("a = sigma(z) =", a)

np.testing.assert_allclose(z, [Z_EXPECTED[0]], atol=ATOL)
np.testing.assert_allclose(a, [A_EXPECTED[0]], atol=ATOL)
# Same thing written with the lecture's layout: z = x^T W^T + b.
np.testing.assert_allclose(xT @ W_lec.T + b, z, rtol=1e-6)

# %% [markdown]
# $z \approx -2.4591$ and $\sigma(z) = 0.0788$, as in the lecture's `Out[9]` and `Out[10]`.
# We get $z = -2.4588$: the lecture printed $W$ and $b$ rounded to 4 decimals, and
# $\sum_i |x_i| \cdot 0.00005 = 19 \cdot 0.00005 \approx 10^{-3}$ bounds the effect of that
# rounding on $z$, so agreement to $5\cdot 10^{-4}$ is all we can ask for.
#
# ## 2. A batch: $z = XW^T \oplus b$
#
# Lecture, "Logistic regression (recap) — Efficient implementation": stacking $N$ samples as
# rows of $X \in \mathbb{R}^{N\times n}$,
#
# $$z = X W^T \oplus b \in \mathbb{R}^{N\times 1},\qquad a = \sigma(z) \in \mathbb{R}^{N\times 1},$$
#
# where $\oplus$ broadcasts the bias to every row. One matrix product replaces a loop over
# samples; the first row is the single sample above.

# %%
X3 = jnp.asarray(X_BATCH)  # (3, 5)
z3, a3 = mj.core.dense_forward(logreg, X3)
print("X.shape", X3.shape, "-> z.shape", z3.shape)
print("z =", np.asarray(z3).ravel().round(4))
print("a =", np.asarray(a3).ravel().round(4))

np.testing.assert_allclose(z3, Z_EXPECTED, atol=ATOL)
np.testing.assert_allclose(a3, A_EXPECTED, atol=ATOL)
np.testing.assert_allclose(z3[:1], z, rtol=1e-6)  # row 1 of the batch is the single sample

# %%
zs = np.linspace(-8, 8, 400)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(zs, mj.activations.sigmoid(jnp.asarray(zs)), label=r"$\sigma(z)$")
ax.scatter(np.asarray(z3).ravel(), np.asarray(a3).ravel(), color="C3", zorder=3,
           label="the lecture's 3 samples")
for zi, ai in zip(np.asarray(z3).ravel(), np.asarray(a3).ravel(), strict=True):
    ax.annotate(f"z={zi:.4f}\na={ai:.4f}", (zi, ai), xytext=(-10, -28), fontsize=8,
                textcoords="offset points", ha="center" if zi > 0 else "left")
ax.set_xlabel("z")
ax.set_ylabel("a")
ax.set_title("Logistic regression forward pass")
ax.legend(loc="upper left")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## 3. The MLP $5 \to 7 \to 4 \to 3$
#
# Lecture, "Forward propagation, MLP" (single sample, then "Efficient implementation" for a batch):
#
# $$
# \begin{aligned}
# Z^{(1)} &= X W^{(1)T} + b^{(1)} \in \mathbb{R}^{N\times 7}, & A^{(1)} &= g_1(Z^{(1)}) \in \mathbb{R}^{N\times 7},\\
# Z^{(2)} &= A^{(1)} W^{(2)T} + b^{(2)} \in \mathbb{R}^{N\times 4}, & A^{(2)} &= g_2(Z^{(2)}) \in \mathbb{R}^{N\times 4},\\
# Z^{(3)} &= A^{(2)} W^{(3)T} + b^{(3)} \in \mathbb{R}^{N\times 3}, & A^{(3)} &= g_3(Z^{(3)}) \in \mathbb{R}^{N\times 3}.
# \end{aligned}
# $$
#
# We take $g_1 = g_2 = \sigma$ and $g_3 = \mathrm{softmax}$ (the lecture's "multiclass →
# softmax" output). `mj.init_mlp` returns a tuple of `Dense` layers; `mj.forward_cache` runs the
# recursion and keeps every $Z^{(l)}$ (`cache.Zs`) and $A^{(l)}$ (`cache.As`, with
# `As[0] = X`).

# %%
params = mj.init_mlp(jax.random.key(SEED), SIZES, hidden=HIDDEN, output=OUTPUT)
for l, layer in enumerate(params, start=1):
    print(f"layer {l}: our W{l} {tuple(layer.W.shape)} = (lecture's W({l}), shape "
          f"{tuple(layer.W.T.shape)})^T, b{l} {tuple(layer.b.shape)}, g{l} = {layer.activation}")
print("layer sizes:", mj.layer_sizes(params))


# %%
def shape_table(cache):
    """Print the shape of every Z^(l) and A^(l) of a forward cache."""
    print(f"  A(0) = X       {tuple(cache.As[0].shape)}")
    for l, (Z, A) in enumerate(zip(cache.Zs, cache.As[1:], strict=True), start=1):
        print(f"  Z({l}) {str(tuple(Z.shape)):9s}  A({l}) = g{l}(Z({l})) {tuple(A.shape)}")


# Single sample: x^T in R^{1x5} (the lecture's first MLP slide).
cache1 = mj.forward_cache(params, xT)
print("single sample, x^T of shape", xT.shape)
shape_table(cache1)
assert [Z.shape for Z in cache1.Zs] == [(1, 7), (1, 4), (1, 3)]

# %% [markdown]
# A single sample must be a **row** of shape `(1, 5)`, exactly like the lecture's
# `xT.view(1, 5)`; a flat `(5,)` vector is rejected with a hint to reshape it:

# %%
try:
    mj.forward_cache(params, jnp.asarray(X_SINGLE[0]))
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## 4. The same MLP on a batch
#
# With $X \in \mathbb{R}^{N\times 5}$ each $Z^{(l)}$ and $A^{(l)}$ gains $N$ rows and nothing
# else changes; row $p$ of the batch result equals the single-sample pass on row $p$.

# %%
X = jnp.concatenate([X3, jax.random.normal(jax.random.key(SEED + 1), (N_BATCH - 3, 5))])
cache = mj.forward_cache(params, X)
print("batch, X of shape", X.shape)
shape_table(cache)
assert [Z.shape for Z in cache.Zs] == [(N_BATCH, 7), (N_BATCH, 4), (N_BATCH, 3)]
assert [A.shape for A in cache.As] == [(N_BATCH, 5), (N_BATCH, 7), (N_BATCH, 4), (N_BATCH, 3)]

# Row 0 of the batch is the lecture's single sample.
for Zb, Z1 in zip(cache.Zs, cache1.Zs, strict=True):
    np.testing.assert_allclose(Zb[:1], Z1, rtol=1e-5, atol=1e-6)

# The recursion written out with the lecture's (out, in) weights: Z = A W^T + b.
A = X
for l, layer in enumerate(params):
    W_lec_l = layer.W.T  # the lecture's W^(l), shape (out, in)
    Z = A @ W_lec_l.T + layer.b[None, :]
    A = mj.activations.ACTIVATIONS[layer.activation].fn(Z)
    np.testing.assert_allclose(Z, cache.Zs[l], rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(A, mj.forward(params, X), rtol=1e-5, atol=1e-6)

# Softmax output: every row of A^(3) is a probability distribution over the 3 classes.
Y_hat = cache.As[-1]
np.testing.assert_allclose(Y_hat.sum(axis=1), 1.0, rtol=1e-5)
print("A(3) = softmax(Z(3)):\n", np.asarray(Y_hat).round(4))
print("row sums:", np.asarray(Y_hat.sum(axis=1)).round(6))

# %% [markdown]
# The activations of every layer for this batch (rows = samples, columns = units): sigmoid
# layers lie in $(0, 1)$, and each softmax row sums to 1.

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), gridspec_kw={"width_ratios": [5, 7, 4, 3]})
titles = ["$A^{(0)} = X$", r"$A^{(1)} = \sigma(Z^{(1)})$", r"$A^{(2)} = \sigma(Z^{(2)})$",
          r"$A^{(3)} = \mathrm{softmax}(Z^{(3)})$"]
for ax, A_l, title in zip(axes, cache.As, titles, strict=True):
    im = ax.imshow(np.asarray(A_l), cmap="viridis", aspect="auto")
    ax.set_title(f"{title}\n{tuple(A_l.shape)}", fontsize=9)
    ax.set_xlabel("unit")
    ax.set_yticks(range(N_BATCH))
    fig.colorbar(im, ax=ax, fraction=0.08)
axes[0].set_ylabel("sample")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Summary.** `mj.core.dense_forward` is one row of the lecture's table ($Z = A W + b$ with our
# $W$ = lecture's $W^T$, then $A = g(Z)$); `mj.forward_cache` chains it and keeps every
# intermediate, which is exactly what backpropagation needs (notebook `02_backpropagation`).
