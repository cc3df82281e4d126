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
# # 02 · Backpropagation, derivation by derivation
#
# Each of the four sets of notes derives the gradients of a network a little differently. This
# notebook takes them one at a time, puts each derivation (markdown) next to the `mlds_jax` code
# that implements it, and checks every formula numerically against `jax.grad` (or `jax.vjp`).
#
# | § | document | derivation | `mlds_jax` |
# |---|---|---|---|
# | 1 | `sigmoid-network-backprop-notes.md` | $\sigma' = \sigma(1-\sigma)$; steps 1–4: $\partial C/\partial z^L$, the recursion for $\partial C/\partial z^l$, $\partial z/\partial w$, $\partial z/\partial b$ | `mj.activations.sigmoid_prime`, `mj.backward_deltas`, `mj.manual_grads` |
# | 2 | `binary-cross-entropy-gradient.md` | $\partial\mathcal{L}/\partial\hat y$ (steps 1–5), $\partial\hat y/\partial z$, $\partial z/\partial W$, $\partial\mathcal{L}/\partial W = \frac1m\sum(A^i-y)(A^{i-1})^T$ | `losses.bce_dA`, `mj.losses.matched_delta`, `mj.manual_grads` |
# | 3 | `mlds-gradient-descent-and-backprop.md` | loss, activation and fully connected layer rules; "Putting it all together", steps 1–7 by hand | `losses.mse_dA`, `Activation.backward`, `mj.core.dense_backward`, `mj.manual_grads` |
# | 4 | `lecture-forward-backward-training.md` | "MSE loss + id", "Backward propagation, MLP", logistic regression's $\partial L/\partial z = \hat y - y$ | `mj.backward_deltas`, `mj.manual_grads` |
# | 5 | all | manual vs `jax.grad` vs finite differences, per leaf | `mj.check_grads` |
#
# Conventions (see notebook 01): batch-major rows, $Z^{(l)} = A^{(l-1)}W^{(l)} + b^{(l)}$ with our
# $W^{(l)}$ of shape (in, out), the lecture's $W^{(l)T}$. We write
# $\delta^{(l)} := \partial L/\partial Z^{(l)}$ for the whole batch; the loss is an average over
# the $N$ rows, so the factor $1/N$ enters once, in $\delta^{(L)}$.
# Everything runs in float64 so that "manual = `jax.grad`" can be asserted to ~1e-10.

# %%
# ruff: noqa: N816  (mixed-case names on purpose: the notes' dL_dW1, dZ, dA, ...)
# Hyperparameters / inputs
SEED = 0
N = 4  # rows of each random batch
SIZES = [5, 7, 4, 3]  # the lecture's MLP
SIGMOID_NET = [3, 4, 4, 1]  # the sigmoid notes' 3-layer network a^0 -> a^1 -> a^2 -> a^3 = y_hat
REGRESSION_NET = [3, 6, 1]  # the MLDS notes' 2-layer regression network X -> H -> Y
HIDDEN_F = "tanh"  # the MLDS notes' hidden activation f (any element-wise one works)
ALPHA = 0.1  # gradient-descent step of the MLDS notes' parameter update
RTOL, ATOL = 1e-10, 1e-12  # float64: manual and jax.grad agree to a few ulp

# %%
import dataclasses
import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)  # before any array is created

import mlds_jax as mj
from mlds_jax import losses


def key_stream(seed):
    """An endless, deterministic supply of fresh jax.random keys."""
    key = jax.random.key(seed)
    while True:
        key, sub = jax.random.split(key)
        yield sub


keys = key_stream(SEED)


def assert_close(actual, desired, rtol=RTOL, atol=ATOL):
    """Element-wise |actual - desired| <= atol + rtol |desired| on every leaf of two pytrees."""
    leaves_a, leaves_d = jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired)
    assert len(leaves_a) == len(leaves_d)
    for a, d in zip(leaves_a, leaves_d, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=rtol, atol=atol)


def with_random_biases(params, scale=0.1):
    """init_mlp starts with b = 0; random biases exercise the bias paths of every check."""
    return tuple(dataclasses.replace(layer, b=scale * jax.random.normal(next(keys), layer.b.shape))
                 for layer in params)


# The references: jax.grad of the same loss (jit-compiled once per shape, which is faster
# than differentiating op by op).
grad_of_loss = jax.jit(jax.grad(mj.loss), static_argnums=3)


@functools.partial(jax.jit, static_argnums=3)
def deltas_by_autodiff(params, X, Y2, loss):
    """delta^(l) = dL/dZ^(l) by jax.grad: add a zero offset E_l to every Z^(l), differentiate
    the loss with respect to the offsets (Y2 already (N, K), one-hot for cross-entropy)."""

    def loss_of_offsets(offsets):
        A = X
        for layer, E in zip(params, offsets, strict=True):
            Z = A @ layer.W + layer.b[None, :] + E
            A = mj.activations.ACTIVATIONS[layer.activation].fn(Z)
        return mj.losses.LOSSES[loss].value(Z, A, Y2)

    zeros = tuple(jnp.zeros((X.shape[0], layer.W.shape[1])) for layer in params)
    return jax.grad(loss_of_offsets)(zeros)


def print_deltas(deltas):
    for l, d in enumerate(deltas, start=1):
        text = np.array2string(np.asarray(d), precision=5, suppress_small=True)
        print(f"delta({l}) = dL/dZ({l}), shape {tuple(d.shape)}:\n{text}")


print("float64 enabled:", jnp.zeros(()).dtype)

# %% [markdown]
# ## 1. `sigmoid-network-backprop-notes.md`
#
# ### 1a. The derivative of the sigmoid (reciprocal rule, exponent rule, chain rule)
#
# $$a = \sigma(z) = \frac{1}{1+e^{-z}},\qquad
# \frac{\partial a}{\partial z} = -\frac{1}{(1+e^{-z})^2}\,\frac{\partial(1+e^{-z})}{\partial z}
# = \frac{e^{-z}}{(1+e^{-z})^2}
# = \frac{1}{1+e^{-z}}\left[\frac{e^{-z}+1}{e^{-z}+1} - \frac{1}{e^{-z}+1}\right]
# = \sigma(z)\,[1-\sigma(z)].$$
#
# `mj.activations.sigmoid_prime(Z)` returns $\sigma(Z)(1-\sigma(Z))$ element-wise. We check it against the
# intermediate form $e^{-z}/(1+e^{-z})^2$ and against `jax.grad` of `mj.activations.sigmoid`.

# %%
z = jnp.linspace(-10.0, 10.0, 201)
s_prime = mj.activations.sigmoid_prime(z)
by_quotient = jnp.exp(-z) / (1 + jnp.exp(-z)) ** 2  # the notes' intermediate result
by_autodiff = jax.vmap(jax.grad(mj.activations.sigmoid))(z)
assert_close(s_prime, by_quotient)
assert_close(s_prime, by_autodiff)
print("max sigma'(z) =", float(s_prime.max()), "at z =", float(z[jnp.argmax(s_prime)]))

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(z, mj.activations.sigmoid(z), label=r"$\sigma(z)$")
ax.plot(z, s_prime, label=r"$\sigma'(z) = \sigma(z)(1-\sigma(z))$")
ax.plot(z[::10], by_autodiff[::10], "k.", label="jax.grad")
ax.set_xlabel("z")
ax.legend()
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ### 1b. Steps 1–4 on the notes' 3-layer sigmoid network
#
# Forward pass: $a^{(0)} = x$, $z^l = w^l a^{l-1} + b^l$, $a^l = \sigma(z^l)$ for $l = 1,2,3$,
# $\hat y = a^3$, and the square error per sample $C = \tfrac12 (y-\hat y)^2$
# (`loss="half_squared_error"`). The notes use column vectors, $w^l$ of shape (out, in); ours is
# the row form $z = a\,W + b$ with $W = (w^l)^T$.
#
# **Step 1.** $\dfrac{\partial C}{\partial z^L} = \dfrac{\partial C}{\partial a^L}\circ\sigma'(z^L)
# = -(y-a^L)\,a^L(1-a^L)$.
#
# **Step 2.** $\dfrac{\partial C}{\partial z^l} = \left[(w^{l+1})^T \dfrac{\partial C}{\partial z^{l+1}}\right]\odot\sigma'(z^l)$,
# in row form $\delta^{(l)} = \big(\delta^{(l+1)} W^{(l+1)T}\big)\odot\sigma'(Z^{(l)})$.
#
# **Steps 3/4.** $\dfrac{\partial z^l}{\partial w^l} = a^{l-1}$ and $\dfrac{\partial z^l}{\partial b^l} = 1$, so
# $\dfrac{\partial C}{\partial W^{(l)}} = a^{(l-1)T}\delta^{(l)}$ (an outer product for one sample) and
# $\dfrac{\partial C}{\partial b^{(l)}} = \delta^{(l)}$.
#
# We run one sample ($N = 1$, as in the notes) and compute each step by hand with `jnp` from the
# forward cache, then compare with `mj.backward_deltas`, `mj.manual_grads` and `jax.grad`.

# %%
net = with_random_biases(mj.init_mlp(next(keys), SIGMOID_NET, hidden="sigmoid", output="sigmoid"))
x = jax.random.normal(next(keys), (1, SIGMOID_NET[0]))
y = jnp.array([[0.25]])
cache = mj.forward_cache(net, x)
a = cache.As  # a[0] = x, a[1], a[2], a[3] = y_hat
zs = cache.Zs  # zs[0] = z^1, zs[1] = z^2, zs[2] = z^3

# Step 1: dC/dz^L = -(y - a^L) a^L (1 - a^L)
d3 = -(y - a[3]) * a[3] * (1 - a[3])
# Step 2: dC/dz^l = (dC/dz^{l+1} W^{l+1 T}) * sigma'(z^l), for l = 2, then l = 1
d2 = (d3 @ net[2].W.T) * mj.activations.sigmoid_prime(zs[1])
d1 = (d2 @ net[1].W.T) * mj.activations.sigmoid_prime(zs[0])
by_hand = (d1, d2, d3)

by_library = mj.backward_deltas(net, x, y, "half_squared_error")
by_autodiff = deltas_by_autodiff(net, x, y, "half_squared_error")
assert_close(by_library, by_hand)
assert_close(by_library, by_autodiff)
print_deltas(by_library)

# Steps 3/4: dC/dW^l = a^{l-1 T} delta^l, dC/db^l = delta^l
grads_by_hand = tuple(mj.Dense(W=a[l].T @ by_hand[l], b=by_hand[l].sum(axis=0),
                               activation=net[l].activation) for l in range(3))
grads = mj.manual_grads(net, x, y, "half_squared_error")
assert_close(grads, grads_by_hand)
assert_close(grads, grad_of_loss(net, x, y, "half_squared_error"))
print("steps 1-4 == mj.backward_deltas == mj.manual_grads == jax.grad  ✓")

# %% [markdown]
# ## 2. `binary-cross-entropy-gradient.md`
#
# The loss, averaged over $M$ samples: $\mathcal{L} = \frac{1}{M}\sum_{i=1}^M -\big(y_i\ln\hat y_i + (1-y_i)\ln(1-\hat y_i)\big)$,
# with $\hat y = \sigma(z)$, $z_i = A_{i-1}W_i + B_i$, and the chain rule
# $\dfrac{\partial\mathcal{L}}{\partial W_i} = \dfrac{\partial\mathcal{L}}{\partial\hat y_i}\cdot\dfrac{\partial\hat y_i}{\partial z_i}\cdot\dfrac{\partial z_i}{\partial W_i}$.
#
# ### 2a. $\partial\mathcal{L}/\partial\hat y$ (steps 1–5)
#
# $$\frac{d}{d\hat y}\big[-y\log\hat y\big] = -\frac{y}{\hat y},\qquad
# \frac{d}{d\hat y}\big[-(1-y)\log(1-\hat y)\big] = \frac{1-y}{1-\hat y}
# \quad\Longrightarrow\quad
# \frac{d\mathcal{L}}{d\hat y} = -\frac{y}{\hat y} + \frac{1-y}{1-\hat y}\quad(\times\tfrac1M\text{ for the average}).$$
#
# `mlds_jax.losses.bce_dA(A, Y)` is this formula (with the $1/M$). We compare it with `jax.grad`
# of the loss written as a function of $\hat y$.

# %%
M = N
Z_out = jax.random.normal(next(keys), (M, 1)) * 2
Y_hat = mj.activations.sigmoid(Z_out)
Y_bce = jax.random.bernoulli(next(keys), 0.5, (M, 1)).astype(jnp.float64)


def bce_of_yhat(Y_hat):
    return jnp.mean(jnp.sum(-(Y_bce * jnp.log(Y_hat) + (1 - Y_bce) * jnp.log(1 - Y_hat)), axis=1))


dL_dyhat = losses.bce_dA(Y_hat, Y_bce)
assert_close(dL_dyhat, (-Y_bce / Y_hat + (1 - Y_bce) / (1 - Y_hat)) / M)  # step 5, times 1/M
assert_close(dL_dyhat, jax.grad(bce_of_yhat)(Y_hat))
print("dL/dy_hat =", np.asarray(dL_dyhat).ravel().round(4))

# %% [markdown]
# ### 2b. $\partial\hat y/\partial z$ and their product: $\delta = \hat y - y$
#
# The notes re-derive $\dfrac{d\sigma}{dz} = \dfrac{e^{-z}}{(1+e^{-z})^2} = \hat y(1-\hat y)$ (§1a).
# Multiplying,
#
# $$\frac{\partial\mathcal{L}}{\partial z} = \Big[-\frac{y}{\hat y} + \frac{1-y}{1-\hat y}\Big]\,\hat y(1-\hat y)
# = -y(1-\hat y) + (1-y)\hat y = \hat y - y\qquad(\times\tfrac1M).$$
#
# `mj.losses.matched_delta(A, Y)` returns this simplified $\delta = \frac1M(A - Y)$; it equals the general
# chain-rule product `bce_dA(A, Y) * sigmoid_prime(Z)` and `jax.grad` of the loss with respect to $Z$.

# %%
delta_general = losses.bce_dA(Y_hat, Y_bce) * mj.activations.sigmoid_prime(Z_out)
delta_fused = mj.losses.matched_delta(Y_hat, Y_bce)
delta_autodiff = jax.grad(lambda Z: losses.bce_value(Z, mj.activations.sigmoid(Z), Y_bce))(Z_out)
assert_close(delta_fused, (Y_hat - Y_bce) / M)
assert_close(delta_general, delta_fused)
assert_close(delta_autodiff, delta_fused)
print("(y_hat - y)/M =", np.asarray(delta_fused).ravel().round(4))

# %% [markdown]
# ### 2c. $\partial z/\partial W$ and the weight and bias gradients
#
# $z_i = A_{i-1}W_i + B_i$ gives $\dfrac{\partial z_i}{\partial W_i} = A_{i-1}^T$ and
# $\dfrac{\partial z_i}{\partial b_i} = 1$, so
#
# $$\frac{\partial\mathcal{L}}{\partial W_i} = \frac1m\sum(A^i - y)(A^{i-1})^T,\qquad
# \frac{\partial\mathcal{L}}{\partial b_i} = \frac1m\sum(A^i - y).$$
#
# The notes' product $(A^i-y)(A^{i-1})^T$ is (out, in); in our (in, out) layout the same sum over
# samples is the matrix product $A^{(i-1)T}\,\delta$ with $\delta = \frac1m(A^i - y)$. We check it on
# the output layer of a small sigmoid + BCE network.

# %%
bce_net = with_random_biases(mj.init_mlp(next(keys), [3, 5, 1], hidden="relu", output="sigmoid"))
Xb = jax.random.normal(next(keys), (M, 3))
cache = mj.forward_cache(bce_net, Xb)
A_prev, A_out = cache.As[1], cache.As[2]
dW_notes = sum(jnp.outer(A_out[p] - Y_bce[p], A_prev[p]) for p in range(M)) / M  # (out, in)
db_notes = jnp.sum(A_out - Y_bce, axis=0) / M

grads = mj.manual_grads(bce_net, Xb, Y_bce, "binary_cross_entropy")
assert_close(grads[-1].W, dW_notes.T)  # ours is (in, out)
assert_close(grads[-1].b, db_notes)
assert_close(grads, grad_of_loss(bce_net, Xb, Y_bce, "binary_cross_entropy"))
print("dL/dW (ours, (in,out)):\n", np.asarray(grads[-1].W).round(5))
print("dL/db:", np.asarray(grads[-1].b).round(5), "  == jax.grad  ✓")

# %% [markdown]
# ## 3. `mlds-gradient-descent-and-backprop.md`
#
# ### 3a. Loss function (MSE)
#
# $L = \frac1n\sum_i (y_i^* - y_i)^2$, and for one element
# $\dfrac{\partial L}{\partial y_2} = \frac1n\dfrac{\partial}{\partial y_2}(y_2^*-y_2)^2 = \frac1n\,2(y_2-y_2^*)$, so
#
# $$\frac{\partial L}{\partial Y} = \frac2n\,(Y - Y^*).$$
#
# `losses.mse_dA` is this with $n = N\cdot K$, the number of entries the mean runs over.

# %%
Y_pred = jax.random.normal(next(keys), (N, 2))
Y_star = jax.random.normal(next(keys), (N, 2))
n = Y_star.size
assert_close(losses.mse_dA(Y_pred, Y_star), 2 / n * (Y_pred - Y_star))
assert_close(losses.mse_dA(Y_pred, Y_star),
             jax.grad(lambda Yp: jnp.mean((Y_star - Yp) ** 2))(Y_pred))
print(f"dL/dY = 2/n (Y - Y*), n = N*K = {n}  == jax.grad  ✓")

# %% [markdown]
# ### 3b. Activation function
#
# With $Y = f(X)$ applied element by element ($X$ here is the activation's *input*),
#
# $$\frac{\partial L}{\partial X} = \Big[\frac{\partial L}{\partial y_1}f'(x_1)\ \cdots\ \frac{\partial L}{\partial y_i}f'(x_i)\Big]
# = \frac{\partial L}{\partial Y}\odot f'(X).$$
#
# Every element-wise activation in `mj.activations.ACTIVATIONS` has `backward(dA, Z) = dA * prime(Z)`; we check
# each against `jax.vjp` (the vector-Jacobian product `jax.grad` is built from). Softmax is not
# element-wise; its backward is the Jacobian-vector product `mj.activations.softmax_backward`, checked too.

# %%
Zin = jax.random.normal(next(keys), (N, 3)) * 2
dA = jax.random.normal(next(keys), (N, 3))
for name, act in mj.activations.ACTIVATIONS.items():
    _, vjp = jax.vjp(act.fn, Zin)
    assert_close(act.backward(dA, Zin), vjp(dA)[0])
    if act.prime is not None:
        assert_close(act.backward(dA, Zin), dA * act.prime(Zin))
    print(f"{name:10s} backward == jax.vjp  ✓")

# %% [markdown]
# ### 3c. Fully connected layer
#
# For $Y = XW + B$ the notes derive, entry by entry, $\dfrac{\partial L}{\partial w_{ij}} = \dfrac{\partial L}{\partial y_j}x_i$,
# $\dfrac{\partial L}{\partial x_i} = \sum_j \dfrac{\partial L}{\partial y_j}w_{ij}$ and
# $\dfrac{\partial L}{\partial b_j} = \dfrac{\partial L}{\partial y_j}$, i.e.
#
# $$\frac{\partial L}{\partial W} = X^T\frac{\partial L}{\partial Y},\qquad
# \frac{\partial L}{\partial X} = \frac{\partial L}{\partial Y}W^T,\qquad
# \frac{\partial L}{\partial B} = \frac{\partial L}{\partial Y}\ \ (\text{summed over the rows of a batch}).$$
#
# `mj.core.dense_backward(delta, A_prev, W)` returns `(dW, db, dA_prev)`.

# %%
Xl = jax.random.normal(next(keys), (N, 5))
Wl = jax.random.normal(next(keys), (5, 3))
bl = jax.random.normal(next(keys), (3,))
dY = jax.random.normal(next(keys), (N, 3))  # upstream dL/dY
dW, db, dX = mj.core.dense_backward(dY, Xl, Wl)
assert_close(dW, Xl.T @ dY)
assert_close(dX, dY @ Wl.T)
assert_close(db, dY.sum(axis=0))
_, vjp = jax.vjp(lambda X, W, b: X @ W + b[None, :], Xl, Wl, bl)
dX_ad, dW_ad, db_ad = vjp(dY)
assert_close((dW, db, dX), (dW_ad, db_ad, dX_ad))
print("dense_backward: dW", dW.shape, "db", db.shape, "dX", dX.shape, " == jax.vjp  ✓")

# %% [markdown]
# ### 3d. "Putting it all together": a 2-layer regression network by hand
#
# **Forward pass** (steps 1–5): $Z^{(1)} = XW^{(1)} + B^{(1)}$, $H = f(Z^{(1)})$,
# $Z^{(2)} = HW^{(2)} + B^{(2)}$, $Y = Z^{(2)}$ (identity output), $L = \frac1n\sum_i (Y^*_i - Y_i)^2$.
#
# **Backward pass** (steps 1–7):
#
# | step | formula |
# |---|---|
# | 1 | $\partial L/\partial Y = \frac2n (Y - Y^*)$ |
# | 2 | $\partial L/\partial W^{(2)} = H^T\,\partial L/\partial Y$ |
# | 3 | $\partial L/\partial B^{(2)} = \sum \partial L/\partial Y$ |
# | 4 | $\partial L/\partial H = \partial L/\partial Y\,(W^{(2)})^T$ |
# | 5 | $\partial L/\partial Z^{(1)} = \partial L/\partial H \odot f'(Z^{(1)})$ |
# | 6 | $\partial L/\partial W^{(1)} = X^T\,\partial L/\partial Z^{(1)}$ |
# | 7 | $\partial L/\partial B^{(1)} = \sum \partial L/\partial Z^{(1)}$ |
#
# Everything below is plain `jnp`; only the parameters come from `mj.init_mlp`.

# %%
reg = with_random_biases(mj.init_mlp(next(keys), REGRESSION_NET, hidden=HIDDEN_F,
                                     output="identity"))
W1, B1, W2, B2 = reg[0].W, reg[0].b, reg[1].W, reg[1].b
X = jax.random.normal(next(keys), (N, REGRESSION_NET[0]))
Y_star = jax.random.normal(next(keys), (N, 1))
f, f_prime = mj.activations.ACTIVATIONS[HIDDEN_F].fn, mj.activations.ACTIVATIONS[HIDDEN_F].prime

# Forward pass, steps 1-5
Z1 = X @ W1 + B1[None, :]  # 1
H = f(Z1)  # 2
Z2 = H @ W2 + B2[None, :]  # 3
Y_out = Z2  # 4: identity output
n = Y_star.size
L = jnp.sum((Y_star - Y_out) ** 2) / n  # 5

# Backward pass, steps 1-7
dL_dY = 2 / n * (Y_out - Y_star)  # 1
dL_dW2 = H.T @ dL_dY  # 2
dL_dB2 = jnp.sum(dL_dY, axis=0)  # 3
dL_dH = dL_dY @ W2.T  # 4
dL_dZ1 = dL_dH * f_prime(Z1)  # 5
dL_dW1 = X.T @ dL_dZ1  # 6
dL_dB1 = jnp.sum(dL_dZ1, axis=0)  # 7

by_hand = (mj.Dense(dL_dW1, dL_dB1, HIDDEN_F), mj.Dense(dL_dW2, dL_dB2, "identity"))
assert_close(L, mj.loss(reg, X, Y_star, "mse"))
assert_close(mj.manual_grads(reg, X, Y_star, "mse"), by_hand)
assert_close(grad_of_loss(reg, X, Y_star, "mse"), by_hand)
for name, g in zip(["dL/dW1", "dL/dB1", "dL/dW2", "dL/dB2"], [dL_dW1, dL_dB1, dL_dW2, dL_dB2],
                   strict=True):
    print(f"{name} {str(tuple(g.shape)):7s} max|.| = {float(jnp.abs(g).max()):.5f}")
print(f"L = {float(L):.6f}; steps 1-7 by hand == mj.manual_grads == jax.grad  ✓")

# %% [markdown]
# **Parameter updates.** $W^{(l)} \leftarrow W^{(l)} - \alpha\,\partial L/\partial W^{(l)}$ and
# $B^{(l)} \leftarrow B^{(l)} - \alpha\,\partial L/\partial B^{(l)}$ (the notes' first formula,
# $W \leftarrow W - \alpha\,\partial L/\partial W$). One step by hand equals one step of
# `mj.make_train_step(optax.sgd(ALPHA), "mse")`, and lowers the loss.

# %%
stepped_by_hand = jax.tree_util.tree_map(lambda p, g: p - ALPHA * g, reg, by_hand)
train_step = mj.make_train_step(optax.sgd(ALPHA), "mse")
stepped, _, metrics = train_step(reg, optax.sgd(ALPHA).init(reg), X, Y_star)
assert_close(stepped, stepped_by_hand)
L_after = mj.loss(stepped, X, Y_star, "mse")
assert L_after < L
print(f"L before {float(metrics['loss']):.6f} -> after one step {float(L_after):.6f}")

# %% [markdown]
# ## 4. `lecture-forward-backward-training.md`
#
# ### 4a. "MSE loss + id activation" on the 5 → 7 → 4 → 3 MLP
#
# For one row, $L_1 = \tfrac12\lVert Y[1,:] - A^{(3)}[1,:]\rVert_2^2$ gives
# $\dfrac{\partial L_1}{\partial a^{(3)}} = a^{(3)T} - y^T$ and, since $a^{(3)} = \mathrm{id}(z^{(3)})$,
# $\dfrac{\partial L_1}{\partial z^{(3)}} = a^{(3)T} - y^T$. **Matrix case:**
# $\dfrac{\partial L}{\partial Z^{(3)}} = \frac1N(A^{(3)} - Y)$.
#
# Then "Backward propagation, MLP", with the lecture's (out, in) weights $W^{(l)}$:
#
# $$\frac{\partial L_1}{\partial a^{(2)}} = \frac{\partial L_1}{\partial z^{(3)}}\,W^{(3)},\qquad
# \frac{\partial L_1}{\partial z^{(2)}} = \frac{\partial L_1}{\partial a^{(2)}}\otimes\frac{\partial g_2}{\partial z^{(2)}},\qquad
# \frac{\partial L}{\partial W^{(l)}} = \frac{\partial L}{\partial Z^{(l)}}^T A^{(l-1)},\qquad
# \frac{\partial L}{\partial b^{(l)}} = \frac{\partial L}{\partial Z^{(l)}}^T\mathbf 1^N.$$
#
# (The slide's "$L = -\frac1N\sum_p L_p$" has a stray minus sign; the loss is
# $\frac1N\sum_p L_p$.) We run this recursion literally in the lecture's layout, with
# `W_lec = W.T`, and compare with `mj.backward_deltas` (which prints the per-layer $\delta$ the way
# the lecture lists $\partial L/\partial z^{(3)}, \partial L/\partial z^{(2)}, \partial L/\partial z^{(1)}$)
# and `mj.manual_grads`, whose `W` gradients are the transposes of the lecture's.

# %%
mlp = with_random_biases(mj.init_mlp(next(keys), SIZES, hidden="sigmoid", output="identity"))
X = jax.random.normal(next(keys), (N, SIZES[0]))
Y = jax.random.normal(next(keys), (N, SIZES[-1]))
cache = mj.forward_cache(mlp, X)
A, Zs = cache.As, cache.Zs

dZ = (A[3] - Y) / N  # dL/dZ(3), matrix case
lecture_deltas, lecture_grads = [dZ], []
for l in (3, 2, 1):
    W_lec = mlp[l - 1].W.T  # (out, in)
    dW_lec = dZ.T @ A[l - 1]  # dL/dW(l) = dL/dZ(l)^T A(l-1), shape (out, in)
    db_lec = dZ.T @ jnp.ones(N)  # dL/db(l) = dL/dZ(l)^T 1^N
    lecture_grads.insert(0, (dW_lec, db_lec))
    if l > 1:
        dA = dZ @ W_lec  # dL/dA(l-1) = dL/dZ(l) W(l)
        dZ = dA * mj.activations.sigmoid_prime(Zs[l - 2])  # dL/dZ(l-1) = dL/dA(l-1) (x) g'(Z(l-1))
        lecture_deltas.insert(0, dZ)

deltas = mj.backward_deltas(mlp, X, Y, "half_squared_error")
assert_close(deltas, tuple(lecture_deltas))
assert_close(deltas, deltas_by_autodiff(mlp, X, Y, "half_squared_error"))
grads = mj.manual_grads(mlp, X, Y, "half_squared_error")
for layer_grad, (dW_lec, db_lec) in zip(grads, lecture_grads, strict=True):
    assert_close(layer_grad.W, dW_lec.T)  # ours = lecture's transposed
    assert_close(layer_grad.b, db_lec)
assert_close(grads, grad_of_loss(mlp, X, Y, "half_squared_error"))
print_deltas(deltas)
print("lecture recursion == mj.backward_deltas == jax.grad  ✓")

# %% [markdown]
# ### 4b. Cross-entropy with a softmax output
#
# For the classification case the lecture swaps the output for $a^{(3)} = o(z^{(3)})$. With
# softmax + cross-entropy the output delta is again $\frac1N(A^{(3)} - Y)$ (notebook 05 derives
# why); `backward_deltas(..., fused=False)` takes the long way instead, $\partial L/\partial\hat Y$
# through the softmax Jacobian (`mj.activations.softmax_backward`). Both agree with `jax.grad`. Integer labels
# are accepted and one-hot encoded.

# %%
clf = dataclasses.replace(mlp[-1], activation="softmax")
clf = (*mlp[:-1], clf)
labels = jnp.array([0, 2, 1, 2])
Y_onehot = jax.nn.one_hot(labels, 3)
fused = mj.backward_deltas(clf, X, labels, "cross_entropy")
general = mj.backward_deltas(clf, X, labels, "cross_entropy", fused=False)
assert_close(fused[-1], (mj.forward(clf, X) - Y_onehot) / N)
assert_close(general, fused)
assert_close(fused, deltas_by_autodiff(clf, X, Y_onehot, "cross_entropy"))
print_deltas(fused)

# %% [markdown]
# ### 4c. Logistic regression: $\partial L/\partial z = \hat y - y$
#
# The lecture's last slide: $z = xw^T + b$, $\hat y = \sigma(z)$, BCE loss, and
# $\dfrac{\partial L}{\partial\hat y} = -\dfrac{y}{\hat y} + \dfrac{1-y}{1-\hat y}$,
# $\dfrac{\partial L}{\partial z} = \hat y - y$, $\dfrac{\partial L}{\partial w} = (\hat y - y)\,x^T$,
# $\dfrac{\partial L}{\partial b} = \hat y - y$. (The slide's
# "$\partial\hat y/\partial z = \sigma(z)(1-\sigma'(z))$" is a typo for $\sigma(z)(1-\sigma(z))$, §1a.)
# On notebook 01's logistic regression ($x = [-8, 1, -3, 5, 2]$, $\hat y = 0.0788$) with label
# $y = 1$: $\partial L/\partial z = 0.0788 - 1 = -0.9212$.

# %%
logreg = (mj.Dense(W=jnp.array([[0.7576, 0.2793, 0.4031, 0.7347, 0.0293]]).T,
                   b=jnp.array([0.7999]), activation="sigmoid"),)
x = jnp.array([[-8.0, 1.0, -3.0, 5.0, 2.0]])
y = jnp.array([[1.0]])
y_hat = mj.forward(logreg, x)
(dz,) = mj.backward_deltas(logreg, x, y, "binary_cross_entropy")
(g,) = mj.manual_grads(logreg, x, y, "binary_cross_entropy")
assert_close(dz, y_hat - y)
assert_close(g.W, ((y_hat - y) * x).T)  # (y_hat - y) x^T, in our (in, out) layout
assert_close(g.b, (y_hat - y)[0])
assert_close((g,), grad_of_loss(logreg, x, y, "binary_cross_entropy"))
np.testing.assert_allclose(dz, [[0.0788 - 1]], atol=5e-4)
print("y_hat =", float(y_hat[0, 0]), " dL/dz =", float(dz[0, 0]))
print("dL/dw =", np.asarray(g.W).ravel().round(4), " dL/db =", np.asarray(g.b).round(4))

# %% [markdown]
# ## 5. The gradient check report: `mj.check_grads`
#
# `mj.check_grads` compares `mj.manual_grads` with `jax.grad` (all entries) and with central finite
# differences $\big(L(\theta+\varepsilon e_i) - L(\theta-\varepsilon e_i)\big)/2\varepsilon$
# (a sample of entries), per leaf, in float64. One report per loss/output pair used above:

# %%
problems = {
    "sigmoid net, half squared error (§1)": (net, jax.random.normal(next(keys), (N, 3)),
                                            jax.random.uniform(next(keys), (N, 1)),
                                            "half_squared_error"),
    "relu + sigmoid, BCE (§2)": (bce_net, Xb, Y_bce, "binary_cross_entropy"),
    f"{HIDDEN_F} + identity, MSE (§3d)": (reg, jax.random.normal(next(keys), (N, 3)), Y_star,
                                         "mse"),
    "sigmoid + softmax, cross-entropy (§4b)": (clf, X, labels, "cross_entropy"),
}
for title, (p, Xp, Yp, loss_name) in problems.items():
    report = mj.check_grads(p, Xp, Yp, loss_name)
    print(f"### {title}\n{report}\n")
    assert report.ok, title
