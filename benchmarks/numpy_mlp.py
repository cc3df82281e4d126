r"""A pure-NumPy MLP trained with plain SGD: the notes' formulas, written out, as a baseline.

Hidden layers use relu, the output softmax with the mean cross-entropy loss.  Row-major,
batch-major, as ``mlds_jax`` (W is (fan_in, fan_out)):

.. math::
   Z^{(l)} = A^{(l-1)} W^{(l)} + b^{(l)},\quad A^{(l)} = \mathrm{relu}(Z^{(l)}),\quad
   A^{(L)} = \mathrm{softmax}(Z^{(L)})

   \delta^{(L)} = (A^{(L)} - Y)/N,\quad
   \frac{\partial L}{\partial W^{(l)}} = A^{(l-1)T}\delta^{(l)},\quad
   \frac{\partial L}{\partial b^{(l)}} = \textstyle\sum_{rows}\delta^{(l)},\quad
   \delta^{(l-1)} = \delta^{(l)} W^{(l)T} \odot \mathrm{relu}'(Z^{(l-1)})

   W \leftarrow W - \alpha\,\partial L/\partial W,\qquad
   b \leftarrow b - \alpha\,\partial L/\partial b

No autodiff, no JIT: every matmul goes to NumPy's BLAS.  The arithmetic is what a careful
NumPy user would write (in-place updates, one temporary per layer and pass); it is not tuned
further, so it measures "the formulas on NumPy", not the best NumPy can do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["NumpyMLP", "one_hot"]


def one_hot(y: np.ndarray, k: int, dtype=np.float32) -> np.ndarray:
    """Integer labels (N,) -> one-hot rows (N, k)."""
    out = np.zeros((y.shape[0], k), dtype=dtype)
    out[np.arange(y.shape[0]), y] = 1
    return out


class NumpyMLP:
    """relu hidden layers, softmax output, mean cross-entropy, plain SGD.

    Args:
      sizes: ``[n_in, h_1, ..., n_out]``.
      seed: seed of the He-normal initialisation (biases zero).
      dtype: parameter and activation dtype (float32 by default).
    """

    def __init__(self, sizes: Sequence[int], seed: int = 0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.Ws = [
            (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(self.dtype)
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        self.bs = [np.zeros(b, dtype=self.dtype) for b in sizes[1:]]

    # --- forward / backward -------------------------------------------------------------------
    def forward(self, X: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(Zs, As) with As[0] = X, Zs[l] = As[l] W_l + b_l, As[-1] = softmax(Zs[-1])."""
        Zs, As = [], [X]
        A = X
        last = len(self.Ws) - 1
        for l, (W, b) in enumerate(zip(self.Ws, self.bs, strict=True)):
            Z = A @ W
            Z += b
            if l < last:
                A = np.maximum(Z, 0)  # relu
            else:  # softmax, shifted by the row max for stability
                A = Z - Z.max(axis=1, keepdims=True)
                np.exp(A, out=A)
                A /= A.sum(axis=1, keepdims=True)
            Zs.append(Z)
            As.append(A)
        return Zs, As

    def loss_and_grads(
        self, X: np.ndarray, Y: np.ndarray
    ) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
        """Mean cross-entropy and (dWs, dbs) for one batch; Y one-hot (N, K)."""
        Zs, As = self.forward(X)
        n = X.shape[0]
        P = As[-1]
        # L = -(1/N) Σ_p ln ŷ_{p, y_p}  (tiny floor: a probability can underflow to 0 in float32)
        loss = -float(np.log(np.maximum(P[Y > 0], np.finfo(self.dtype).tiny)).sum()) / n
        delta = (P - Y) * self.dtype.type(1.0 / n)  # δ^{(L)} = (A − Y)/N
        dWs: list[np.ndarray] = [None] * len(self.Ws)  # type: ignore[list-item]
        dbs: list[np.ndarray] = [None] * len(self.Ws)  # type: ignore[list-item]
        for l in range(len(self.Ws) - 1, -1, -1):
            dWs[l] = As[l].T @ delta  # ∂L/∂W = A_prevᵀ δ
            dbs[l] = delta.sum(axis=0)  # ∂L/∂b = Σ_rows δ
            if l > 0:
                delta = delta @ self.Ws[l].T  # δ Wᵀ
                delta *= Zs[l - 1] > 0  # ⊙ relu'(Z)
        return loss, dWs, dbs

    def sgd_step(self, X: np.ndarray, Y: np.ndarray, lr: float) -> float:
        """One update W ← W − α ∂L/∂W, b ← b − α ∂L/∂b; returns the loss before it."""
        loss, dWs, dbs = self.loss_and_grads(X, Y)
        a = self.dtype.type(lr)
        for W, b, dW, db in zip(self.Ws, self.bs, dWs, dbs, strict=True):
            dW *= a
            W -= dW
            db *= a
            b -= db
        return loss

    def epoch(
        self, X: np.ndarray, Y: np.ndarray, batch_size: int, lr: float, rng: np.random.Generator
    ) -> float:
        """One shuffled pass over (X, Y), the last partial batch included; mean loss."""
        n = X.shape[0]
        perm = rng.permutation(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            total += self.sgd_step(X[idx], Y[idx], lr) * idx.shape[0]
        return total / n
