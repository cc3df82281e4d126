r"""scikit-learn estimators over :func:`mlds_jax.fit`: ``MLPClassifier`` and ``MLPRegressor``.

>>> from mlds_jax.sklearn import MLPClassifier
>>> clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(X, y)
>>> clf.predict_proba(X[:3]); clf.score(X, y); clf.params_   # our pytree, for every mj.* call

Drop-in replacements for :class:`sklearn.neural_network.MLPClassifier` / ``MLPRegressor``
with the stochastic solvers ("adam", "sgd"): the same parameter names and meanings, the same
fitted attributes (``coefs_[i]`` is (fan_in, fan_out), as scikit-learn's and as our ``W``),
the same losses and the same L2 penalty; the gradients are our hand-derived ones and each
``fit`` is one call of :func:`mlds_jax.fit`, whose compiled epochs are reused across calls
(``GridSearchCV`` folds and candidates of one architecture share them).

scikit-learn's conventions, and ours (see the README's "scikit-learn users" section):

* Losses: regression is ½‖ŷ − y‖² per row ("half_squared_error"; identity output), binary
  classification one sigmoid output with binary cross-entropy, multiclass softmax with
  cross-entropy, multilabel (2-D 0/1 ``y``) K sigmoid outputs with binary cross-entropy
  summed over the outputs: exactly the functions whose gradients scikit-learn's ``_backprop``
  computes.  With sample weights s, each minibatch is weighted s_n / Σ_batch s (L1).
* ``alpha``: the L2 penalty 0.5·α·Σ_l ‖W_l‖² / S_batch added to each minibatch loss, S_batch
  the batch's total sample weight (its row count when unweighted), biases not penalised,
  equation (R1) (implemented in :mod:`mlds_jax.training`).
* ``loss_curve_`` holds, per epoch, the row-count-weighted mean of the minibatch losses
  (penalty included) before each update, as scikit-learn's.  For multi-output regression
  scikit-learn *reports* ½·mean_k (ŷ_k − y_k)² while its gradient is that of ½·Σ_k: we report
  the loss whose gradient we apply (½·Σ_k), K times scikit-learn's figure; one output agrees.
* Initialisation: scikit-learn's own, drawn with the same NumPy ``RandomState`` calls
  (Glorot uniform, bound √(6/(fan_in + fan_out)), √(2/…) for "logistic", biases alike), so
  the same ``random_state`` gives the same initial weights as scikit-learn.  The minibatch
  order then comes from :func:`mlds_jax.fit`'s own shuffle (seeded from ``random_state``).
* Optimizers: "adam" is ``optax.adam`` (scikit-learn adds ε to √v before the bias correction,
  optax after: the same update with ε scaled by √(1 − β₂ᵗ)); "sgd" is
  ``optax.chain(scale_by_learning_rate(η_t), trace(momentum, nesterov))``, scikit-learn's
  velocity update v ← μv − η_t g exactly, with "constant" and "invscaling"
  (η_t = η₀ / (t + 1)^power_t, t = samples seen at the end of the previous epoch) schedules;
  "adaptive" continues training with η/5 in a further ``fit`` call each time the loss stalls
  (the momentum buffer restarts there).  Both solvers are element-wise and run on one flat
  vector of all the parameters (``optax.flatten``: the same arithmetic, fewer kernels).
  ``optimizer=`` takes any optax transformation and then overrides solver and learning-rate
  settings; it runs as given, leaf by leaf.
* Stopping: scikit-learn's rule on scikit-learn's quantity: an epoch counts as no
  improvement unless it beats the best value so far by ``tol``; ``n_iter_no_change + 1`` such
  epochs in a row end training (:class:`mlds_jax.EarlyStopping` with ``reference="best"``).
  The value is the training loss, or with ``early_stopping=True`` the validation score
  (accuracy, exact match for multilabel; R² for regression) on a split drawn as scikit-learn
  does (``train_test_split``, stratified for single-output classification); then the
  parameters of the best epoch are restored and ``validation_scores_`` holds the score per
  epoch.
* Floating point, as scikit-learn: float32 input trains and predicts in float32; float64 (and
  integer) input in float64, whatever JAX's process-wide x64 setting (the estimator switches
  x64 on for its own calls with ``jax.enable_x64``).  A fitted network keeps its precision
  (``coefs_[0].dtype``); predictions are computed in the wider of it and the input's, so
  float64 input gives float64 output.  Only dense inputs.

* ``solver="lm"``: Levenberg–Marquardt (:func:`mlds_jax.levenberg_marquardt`, MATLAB's
  ``trainlm``) on the whole training set, for the small networks and smooth data it suits:
  ``max_iter`` counts LM iterations; ``tol``/``n_iter_no_change`` stop a run whose training
  loss (validation loss with ``early_stopping``, best parameters restored) stalls, as above;
  LM's own rules (‖∇L‖ ≤ 1e-7, damping beyond 1e10) stop it too.  The objective is the same
  loss and penalty with S the whole set's total weight.  ``batch_size``, ``shuffle``, the
  learning-rate and momentum settings do not apply.  ``partial_fit`` runs one LM iteration
  (the damping carried between calls).  With ``early_stopping`` a classifier records
  ``best_validation_score_`` (the returned parameters' accuracy) but no per-iteration
  ``validation_scores_`` (None); a regressor's are R² from the validation loss (K1).
* ``partial_fit`` runs one epoch on a :class:`mlds_jax.Trainer` and keeps the optimizer state
  between calls (as scikit-learn); a ``partial_fit`` after ``fit`` starts a fresh optimizer
  state (``fit``'s stays inside :func:`mlds_jax.fit`).
* Sample weights: negative weights are rejected (:func:`mlds_jax.fit`); with
  ``early_stopping`` the validation loss/score is unweighted; the epoch loss in
  ``loss_curve_`` averages the minibatch losses by their total weight (scikit-learn: by their
  row counts; the same when unweighted).

Not implemented: ``solver="lbfgs"`` (and ``max_fun``), ``loss="poisson"``, sparse inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from abc import ABC, abstractmethod
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The whole module is the face of the "sklearn" extra (its classes derive from scikit-learn's):
# a missing scikit-learn costs only this module, with an error naming the extra.
try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mlds_jax.sklearn needs scikit-learn >= 1.6: pip install 'scikit-learn>=1.6' (from a "
        "clone of mlds_jax: pip install -e '.[sklearn]')"
    ) from err

import mlds_jax as mj
from mlds_jax.layers import Dense, Params

__all__ = ["MLPClassifier", "MLPRegressor", "load", "r2_from_loss"]

#: scikit-learn's hidden activation names → ours.
ACTIVATION_NAMES = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_OUT_NAMES = {"identity": "identity", "logistic": "sigmoid", "softmax": "softmax"}
_LOSS_FOR_OUT = {
    "identity": "half_squared_error",
    "logistic": "binary_cross_entropy",
    "softmax": "cross_entropy",
}
_SOLVERS = ("sgd", "adam", "lm")
_SCHEDULES = ("constant", "invscaling", "adaptive")


def r2_from_loss(half_sq_loss: float, n: int, ss_tot: float) -> float:
    r"""R² from the mean half squared error, equation (K1).

    L = (1/N) Σ_n ½ ‖ŷ_n − y_n‖²  ⇒  SS_res = Σ_n Σ_k (ŷ_nk − y_nk)² = 2 N L, and
    R² = 1 − SS_res / SS_tot with SS_tot = Σ_n Σ_k (y_nk − ȳ_k)² (scikit-learn's
    ``r2_score(multioutput="variance_weighted")``; for one output its plain R²).

    Args:
      half_sq_loss: L, the mean over N rows of ½‖ŷ_n − y_n‖².  n: N.  ss_tot: SS_tot.

    Returns:
      R² (1 for a perfect fit of constant targets, 0 otherwise, as ``r2_score``).
    """
    ss_res = 2.0 * n * half_sq_loss  # (K1)
    if ss_tot > 0:
        return 1.0 - ss_res / ss_tot
    return 1.0 if ss_res == 0 else 0.0


def _sklearn_sgd(learning_rate, momentum: float, nesterov: bool) -> optax.GradientTransformation:
    """scikit-learn's SGD: v ← μ v − η_t g, Δθ = v (or μ v − η_t g with Nesterov)."""
    return optax.chain(
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=nesterov),
    )


def _invscaling(lr0: float, power_t: float, n_batches: int, n_samples: int, t0: int):
    """η for update k: η₀ in the first epoch, then η₀ / (t + 1)^power_t with t the samples
    seen when the previous epoch ended (scikit-learn updates η at each epoch's end)."""

    def schedule(count):
        epoch = (count // n_batches).astype(jnp.result_type(float))
        t = t0 + epoch * n_samples
        return jnp.where(epoch == 0, lr0, lr0 / (t + 1.0) ** power_t)

    return schedule


def _precision(*dtypes):
    """The context for computing in the widest of ``dtypes``: float64 work runs with JAX's
    x64 switched on for the call (whatever the process's setting); float32 as it is."""
    wide = any(np.dtype(d) == np.float64 for d in dtypes)
    return jax.enable_x64(True) if wide else contextlib.nullcontext()


def _work_dtype(*dtypes) -> np.dtype:
    """float32 when every dtype is float32, else float64 (scikit-learn's rule)."""
    return np.dtype(np.float32 if all(np.dtype(d) == np.float32 for d in dtypes) else np.float64)


def _as_numpy_params(params: Params) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [np.asarray(p.W) for p in params], [np.asarray(p.b) for p in params]


def _as_value_error(check, *args, **kwargs):
    """A :mod:`mlds_jax.validation` check whose TypeError (a bool, a string, ...) becomes a
    ValueError, with the same message: scikit-learn reports every bad hyperparameter as a
    ValueError when ``fit`` starts."""
    try:
        return check(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


class _BaseMLP(BaseEstimator, ABC):
    """The shared machinery; use :class:`MLPClassifier` or :class:`MLPRegressor`."""

    # fitted attributes (annotations only: nothing is set before fit)
    coefs_: list[np.ndarray]
    intercepts_: list[np.ndarray]
    loss_: float | None
    loss_curve_: list[float]
    best_loss_: float | None
    validation_scores_: list[float] | None
    best_validation_score_: float | None
    n_iter_: int
    t_: int
    n_layers_: int
    n_outputs_: int
    out_activation_: str
    n_features_in_: int
    feature_names_in_: np.ndarray
    classes_: np.ndarray
    _label_binarizer: LabelBinarizer
    _partial_opt_state: Any

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        optimizer=None,
        grads="manual",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.optimizer = optimizer
        self.grads = grads

    # --- parameters ---------------------------------------------------------------------------
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        return [
            _as_value_error(mj.validation.positive_int, s, f"hidden_layer_sizes[{i}]")
            for i, s in enumerate(sizes)
        ]

    def _check_params(self) -> None:
        def real(name, lo, hi=math.inf, closed="left"):
            _as_value_error(
                mj.validation.number_in_interval, getattr(self, name), name, lo, hi, closed=closed
            )

        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(
                f"activation must be one of {list(ACTIVATION_NAMES)}, got {self.activation!r}"
            )
        if self.solver not in _SOLVERS:
            raise ValueError(
                f"solver must be one of {list(_SOLVERS)} (lbfgs is not implemented), "
                f"got {self.solver!r}"
            )
        if self.learning_rate not in _SCHEDULES:
            raise ValueError(
                f"learning_rate must be one of {list(_SCHEDULES)}, got {self.learning_rate!r}"
            )
        if self.grads not in ("manual", "autodiff"):
            raise ValueError(f"grads must be 'manual' or 'autodiff', got {self.grads!r}")
        real("alpha", 0)
        real("learning_rate_init", 0, closed="neither")
        real("power_t", 0)
        real("tol", 0)
        real("momentum", 0, 1, closed="both")
        real("validation_fraction", 0, 1)
        real("beta_1", 0, 1)
        real("beta_2", 0, 1)
        real("epsilon", 0, closed="neither")
        _as_value_error(mj.validation.positive_int, self.max_iter, "max_iter")
        if not (isinstance(self.n_iter_no_change, float) and self.n_iter_no_change == np.inf):
            _as_value_error(mj.validation.positive_int, self.n_iter_no_change, "n_iter_no_change")
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _as_value_error(mj.validation.positive_int, self.batch_size, "batch_size")
        if self.optimizer is not None and not (
            hasattr(self.optimizer, "init") and hasattr(self.optimizer, "update")
        ):
            raise TypeError(
                "optimizer must be None or an optax.GradientTransformation, "
                f"got {type(self.optimizer).__name__}"
            )

    def _make_optimizer(self, n_batches: int, n_samples: int, lr: float, t0: int):
        if self.optimizer is not None:
            return self.optimizer
        # Both solvers act element by element, so they run on one flat vector of all the
        # parameters (``optax.flatten``): the same arithmetic per entry, but one fused update
        # per step instead of one per leaf and state slot (on XLA:CPU each kernel launch
        # costs microseconds; digits' default fit: ~14% less time per epoch).
        if self.solver == "adam":
            # the learning rate as optimizer state: one compiled epoch serves every value
            # (β₁, β₂, ε stay Python floats: optax raises them to the integer step count)
            adam = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps"))
            return optax.flatten(
                adam(learning_rate=lr, b1=self.beta_1, b2=self.beta_2, eps=self.epsilon)
            )
        sgd = optax.inject_hyperparams(_sklearn_sgd, static_args=("nesterov",))
        nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
        rate: Any = lr
        if self.learning_rate == "invscaling":
            rate = _invscaling(lr, float(self.power_t), n_batches, n_samples, t0)
        return optax.flatten(sgd(learning_rate=rate, momentum=self.momentum, nesterov=nesterov))

    # --- the network ---------------------------------------------------------------------------
    @property
    def params_(self) -> Params:
        """The fitted network as our pytree (a tuple of :class:`mlds_jax.Dense`), in the
        network's precision (float64 arrays stay float64 whatever the x64 setting)."""
        check_is_fitted(self, "coefs_")
        with _precision(self.coefs_[0].dtype):
            return self._params_from(self.coefs_, self.intercepts_)

    def _params_from(self, coefs, intercepts, dtype=None) -> Params:
        dtype = np.asarray(coefs[0]).dtype if dtype is None else dtype
        hidden = ACTIVATION_NAMES[self.activation]
        out = _OUT_NAMES[self.out_activation_]
        L = len(coefs)
        return tuple(
            Dense(
                W=jax.device_put(np.asarray(W, dtype=dtype)),  # a transfer, no compile
                b=jax.device_put(np.asarray(b, dtype=dtype)),
                activation=out if i == L - 1 else hidden,
            )
            for i, (W, b) in enumerate(zip(coefs, intercepts, strict=True))
        )

    def _init_coefs(self, layer_units: list[int], rng: np.random.RandomState, dtype) -> None:
        """scikit-learn's ``_init_coef``: Glorot uniform, the same RandomState draws."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
            self.intercepts_.append(rng.uniform(-bound, bound, fan_out).astype(dtype))

    def _forward(self, X) -> np.ndarray:
        check_is_fitted(self, "coefs_")
        X = np.asarray(validate_data(self, X, reset=False, dtype=(np.float64, np.float32)))
        dtype = _work_dtype(X.dtype, self.coefs_[0].dtype)
        with _precision(dtype):
            params = self._params_from(self.coefs_, self.intercepts_, dtype)
            return np.asarray(mj.forward(params, X.astype(dtype, copy=False)))

    @abstractmethod
    def _validate_input(self, X, y, incremental: bool, reset: bool) -> tuple[Any, Any]:
        """(X, targets) validated for this estimator's task (classifier or regressor)."""

    @abstractmethod
    def _out_activation(self) -> str:
        """The output layer's activation for the fitted targets."""

    # --- fitting --------------------------------------------------------------------------------
    def _fit(self, X, y, sample_weight=None, incremental: bool = False):
        self._check_params()
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        # the precision: the input's on a first fit (float32 stays float32, the rest float64),
        # the network's afterwards (warm_start, partial_fit)
        dtype = _work_dtype(X.dtype) if first_pass else self.coefs_[0].dtype
        with _precision(dtype):
            return self._fit_in(X, Y, sample_weight, incremental, first_pass, hidden, dtype)

    def _fit_in(self, X, Y, sample_weight, incremental, first_pass, hidden, dtype):
        X = np.asarray(X, dtype=dtype)
        Y = np.asarray(Y, dtype=dtype)
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        n_samples, n_features = X.shape
        rng = check_random_state(self.random_state)
        if first_pass:
            self.n_outputs_ = Y.shape[1]
            self.n_layers_ = len(hidden) + 2
            self.out_activation_ = self._out_activation()
            self._init_coefs([n_features, *hidden, self.n_outputs_], rng, dtype)
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_ = []
            if self.early_stopping:
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
                self.best_loss_ = None
            else:
                self.validation_scores_ = self.best_validation_score_ = None
                self.best_loss_ = np.inf
        elif Y.shape[1] != self.n_outputs_ or [W.shape[1] for W in self.coefs_[:-1]] != hidden:
            raise ValueError(
                f"warm_start/partial_fit: the network has {self.n_outputs_} output(s) and "
                f"hidden layers {[W.shape[1] for W in self.coefs_[:-1]]}; got y with "
                f"{Y.shape[1]} column(s) and hidden_layer_sizes={hidden}"
            )
        if not incremental or first_pass:
            self._partial_opt_state = None  # fit() starts the optimizer afresh
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        loss = _LOSS_FOR_OUT[self.out_activation_]
        params = self._params_from(self.coefs_, self.intercepts_)
        sw = None if sample_weight is None else np.asarray(sample_weight, dtype=dtype)

        X_val = Y_val = None
        if self.early_stopping:
            stratify = Y[:, 0] if (is_classifier(self) and self.n_outputs_ == 1) else None
            if is_classifier(self) and self.out_activation_ == "softmax":
                stratify = Y.argmax(axis=1)
            arrays = [X, Y] if sw is None else [X, Y, sw]
            split = train_test_split(
                *arrays, random_state=rng, test_size=self.validation_fraction, stratify=stratify
            )
            X, X_val, Y, Y_val = (np.asarray(a) for a in split[:4])
            if sw is not None:
                sw = split[4]
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
        n_train = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_train)
        else:
            if self.batch_size > n_train:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. "
                    "It is going to be clipped",
                    stacklevel=3,
                )
            batch_size = int(np.clip(self.batch_size, 1, n_train))
        n_batches = -(-n_train // batch_size)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        epochs = 1 if incremental else int(self.max_iter)
        if self.solver == "lm":
            params = self._fit_lm(params, X, Y, sw, X_val, Y_val, loss, incremental)
        elif incremental:
            params = self._partial_epoch(params, X, Y, sw, loss, batch_size, n_batches, seed)
        else:
            params = self._fit_epochs(
                params, X, Y, sw, X_val, Y_val, loss, batch_size, n_batches, seed, epochs
            )
        self.coefs_, self.intercepts_ = _as_numpy_params(params)
        if not all(np.isfinite(a).all() for a in (*self.coefs_, *self.intercepts_)):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain "
                "large values and need to be preprocessed."
            )
        return self

    def _fit_kwargs(self, loss, batch_size, seed, sw) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            loss=loss,
            batch_size=batch_size,
            key=seed,
            grads=self.grads,
            progress=False,
            shuffle=bool(self.shuffle),
            l2=float(self.alpha),
        )
        if sw is not None:
            kwargs["sample_weight"] = sw
        return kwargs

    def _fit_epochs(self, params, X, Y, sw, X_val, Y_val, loss, bs, n_batches, seed, epochs):
        patience = None if self.n_iter_no_change == np.inf else int(self.n_iter_no_change) + 1
        stop = None
        if patience is not None:
            # scikit-learn's rule: an epoch counts as no improvement unless it beats the best
            # value so far by tol (the training loss, or with early_stopping the validation
            # score: accuracy or R²); the best value follows every better epoch
            score = "val_accuracy" if is_classifier(self) else "val_r2"
            stop = mj.EarlyStopping(
                patience=patience,
                min_delta=float(self.tol),
                monitor=score if self.early_stopping else "loss",
                restore_best=bool(self.early_stopping),
                reference="best",
            )
        later_stop = None
        if stop is not None:
            later_stop = dataclasses.replace(stop, patience=max(1, stop.patience - 1))
        val = None if X_val is None else (X_val, Y_val)
        ss_tot = None
        if val is not None and not is_classifier(self):
            ss_tot = float(np.sum((Y_val - Y_val.mean(axis=0)) ** 2))
        lr = float(self.learning_rate_init)
        n_train = X.shape[0]
        done = 0
        while True:
            optimizer = self._make_optimizer(n_batches, n_train, lr, self.t_)
            callback = self._verbose_callback(self.n_iter_) if self.verbose else None

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", mj.TrainingDivergedWarning)
                params, history = mj.fit(
                    params,
                    X,
                    Y,
                    optimizer=optimizer,
                    epochs=epochs - done,
                    validation_data=val,
                    # after an "adaptive" reduction scikit-learn keeps its best loss: the new
                    # call's first epoch improves on nothing, so one epoch less of patience
                    early_stopping=stop if done == 0 or stop is None else later_stop,
                    on_epoch_end=callback,
                    **self._fit_kwargs(loss, bs, seed + done, sw),
                )
            for w in caught:
                if not issubclass(w.category, mj.TrainingDivergedWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if history.stop_reason == "diverged":
                raise ValueError(
                    "Solver produced non-finite parameter weights. The input data may "
                    "contain large values and need to be preprocessed."
                )
            n_run = len(history["loss"])
            done += n_run
            self._record(history, n_train, n_run, done, val, ss_tot)
            if self.verbose and history.stop_reason == "early_stopping":
                print(
                    f"{'Validation score' if self.early_stopping else 'Training loss'} did "
                    f"not improve more than tol={self.tol:f} for "
                    f"{self.n_iter_no_change} consecutive epochs."
                )
            adaptive = (
                self.optimizer is None
                and self.solver == "sgd"
                and self.learning_rate == "adaptive"
                and history.stop_reason == "early_stopping"
            )
            if not adaptive or done >= epochs or lr <= 1e-6:  # scikit-learn: stop at η <= 1e-6
                break
            lr /= 5.0  # scikit-learn's "adaptive": divide by 5 on a plateau, go on
        if history.stop_reason == "completed" and done >= epochs:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return params

    def _record(self, history, n_train: int, n_run: int, n_iter: int, val, ss_tot) -> None:
        self.loss_curve_.extend(float(v) for v in history["loss"])
        self.loss_ = self.loss_curve_[-1]
        self.n_iter_ = n_iter  # epochs of this call, as scikit-learn's
        self.t_ += n_run * n_train
        if val is None:
            previous = np.inf if self.best_loss_ is None else self.best_loss_
            self.best_loss_ = float(min([previous, *history["loss"]]))
            return
        if is_classifier(self):
            scores = [float(v) for v in history["val_accuracy"]]
        else:
            n_val = val[0].shape[0]
            scores = [r2_from_loss(v, n_val, ss_tot) for v in history["val_loss"]]
        self.validation_scores_ = [*(self.validation_scores_ or []), *scores]
        best = history.best_epoch if history.best_epoch is not None else int(np.argmax(scores))
        self.best_validation_score_ = scores[best]

    def _fit_lm(self, params, X, Y, sw, X_val, Y_val, loss, incremental: bool):
        """``solver="lm"``: :func:`mlds_jax.levenberg_marquardt` on the whole training set.

        The objective is the other solvers' full-batch one: Σ_n s_n ℓ_n / S plus the penalty
        (R1) with S = Σ_n s_n (the row count when unweighted), i.e. ``l2 = alpha / S`` (M5).
        ``max_iter`` counts LM iterations (accepted steps); ``tol`` and ``n_iter_no_change``
        stop the run after ``n_iter_no_change + 1`` iterations in a row that lower the training
        loss by no more than ``tol`` (with ``early_stopping``: the validation loss, its best
        parameters restored); LM's own rules (‖∇L‖ ≤ 1e-7, damping above 1e10) also stop it.
        ``partial_fit`` runs one LM iteration, the damping carried from call to call.
        """
        S = float(X.shape[0]) if sw is None else float(np.sum(sw))
        wait = None if self.n_iter_no_change == np.inf else int(self.n_iter_no_change) + 1
        kwargs: dict[str, Any] = dict(
            max_iter=1 if incremental else int(self.max_iter),
            l2=float(self.alpha) / S if S > 0 else 0.0,
            min_delta=float(self.tol),
            row_weights=None if sw is None else (sw / S if S > 0 else sw),
        )
        state = self._partial_opt_state if incremental else None
        if isinstance(state, tuple) and state[0] == "lm":  # partial_fit: μ from the last call
            kwargs["damping"] = min(state[1], 1e10)
        if X_val is not None:
            kwargs.update(validation_data=(X_val, Y_val), max_fail=wait or 2**30)
        else:
            kwargs["patience"] = wait
        params, result = mj.levenberg_marquardt(params, X, Y, loss, **kwargs)
        self._partial_opt_state = ("lm", result.damping) if incremental else None
        if self.verbose:
            for i, v in enumerate(result.loss_history[1:], start=len(self.loss_curve_) + 1):
                print(f"Iteration {i}, loss = {v:.8f}")
        self.loss_curve_.extend(float(v) for v in result.loss_history[1:])
        self.loss_ = float(result.loss_history[-1])
        self.n_iter_ = result.iterations
        self.t_ += result.iterations * X.shape[0]
        if X_val is None:
            previous = np.inf if self.best_loss_ is None else self.best_loss_
            self.best_loss_ = float(min(previous, self.loss_))
        elif is_classifier(self):  # accuracy needs every iterate: the returned one's only
            P = np.asarray(mj.forward(params, X_val))
            if self.out_activation_ == "softmax":
                hits = P.argmax(axis=1) == Y_val.argmax(axis=1)
            else:  # predict's threshold (LabelBinarizer's 0.5); all labels of a row
                hits = np.all((P > 0.5) == (Y_val > 0.5), axis=1)
            self.validation_scores_ = None
            self.best_validation_score_ = float(np.mean(hits))
        else:
            ss_tot = float(np.sum((Y_val - Y_val.mean(axis=0)) ** 2))
            val_losses = result.val_loss_history
            assert val_losses is not None  # validation_data was given
            scores = [r2_from_loss(v, Y_val.shape[0], ss_tot) for v in val_losses]  # (K1)
            self.validation_scores_ = [*(self.validation_scores_ or []), *scores[1:]]
            self.best_validation_score_ = scores[result.best_iteration or 0]
        if result.stop_reason == "max_iter" and not incremental:
            warnings.warn(
                f"Levenberg-Marquardt: Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return params

    def _partial_epoch(self, params, X, Y, sw, loss, bs, n_batches, seed):
        """One epoch on a :class:`mlds_jax.Trainer`, the optimizer state kept between calls
        (as scikit-learn's partial_fit).  The trainer (it owns compiled programs) is not
        pickled; the optimizer state (arrays) is."""
        tag = (X.shape[1], loss, bs, self.grads, bool(self.shuffle))
        trainer = getattr(self, "_partial_trainer", None)
        opt_state = getattr(self, "_partial_opt_state", None)
        if trainer is None or trainer[0] != tag:
            optimizer = self._make_optimizer(n_batches, X.shape[0], self.learning_rate_init, 0)
            trainer = (
                tag,
                mj.Trainer(loss, optimizer, self.grads, bs, shuffle=bool(self.shuffle)),
            )
        if opt_state is not None and opt_state[0] != tag:
            opt_state = None
        data = trainer[1].prepare(params, X, Y, key=seed, sample_weight=sw, l2=float(self.alpha))
        state = trainer[1].init(params, data, None if opt_state is None else opt_state[1])
        state, chunk = trainer[1].run(state, data, 1)
        if chunk.status == "diverged":
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain "
                "large values and need to be preprocessed."
            )
        self._partial_trainer, self._partial_opt_state = trainer, (tag, state.opt_state)
        loss_value = float(chunk.logs[0]["loss"])
        self.loss_ = loss_value
        self.loss_curve_.append(loss_value)
        self.n_iter_ = 1  # as scikit-learn's partial_fit: the epochs of this call
        self.t_ += X.shape[0]
        if self.best_loss_ is not None:
            self.best_loss_ = min(self.best_loss_, loss_value)
        return state.params

    @staticmethod
    def _verbose_callback(offset: int):
        def callback(e: int, m: dict) -> None:
            print(f"Iteration {offset + e + 1}, loss = {m['loss']:.8f}")

        return callback

    def __getstate__(self):
        state: dict = super().__getstate__()  # pyright: ignore[reportAssignmentType]
        state = {
            k: v for k, v in state.items() if k != "_partial_trainer"
        }  # compiled code: rebuilt on the next partial_fit
        return state

    # --- saving ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted network and everything needed to rebuild the estimator to ``path``
        in :func:`mlds_jax.save`'s checkpoint format (no pickle); read it with :func:`load`."""
        check_is_fitted(self, "coefs_")
        params = {
            k: v
            for k, v in self.get_params(deep=False).items()
            if k not in ("optimizer", "random_state")
        }
        params["hidden_layer_sizes"] = self._hidden_sizes()
        meta: dict[str, Any] = {
            "estimator": type(self).__name__,
            "params": params,
            "out_activation_": self.out_activation_,
            "n_iter_": int(self.n_iter_),
            "t_": int(self.t_),
            "loss_curve_": [float(v) for v in self.loss_curve_],
            "n_features_in_": int(self.n_features_in_),
        }
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in_"] = [str(v) for v in self.feature_names_in_]
        if hasattr(self, "classes_"):
            meta["classes_"] = np.asarray(self.classes_).tolist()
            meta["classes_dtype"] = np.asarray(self.classes_).dtype.str
            meta["y_type"] = self._label_binarizer.y_type_
        mj.save(path, self.params_, metadata=meta)

    # --- misc -------------------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's interface over :func:`mlds_jax.fit`.

    Parameters are scikit-learn's (``hidden_layer_sizes``, ``activation`` in {"identity",
    "logistic", "tanh", "relu"}, ``solver`` in {"adam", "sgd", "lm"}, ``alpha``, ``batch_size``,
    ``learning_rate``, ``learning_rate_init``, ``power_t``, ``max_iter``, ``shuffle``,
    ``random_state``, ``tol``, ``verbose``, ``warm_start``, ``momentum``,
    ``nesterovs_momentum``, ``early_stopping``, ``validation_fraction``, ``beta_1``,
    ``beta_2``, ``epsilon``, ``n_iter_no_change``) plus ``optimizer`` (any optax
    transformation, overriding solver and learning rate) and ``grads`` ("manual":
    hand-derived backprop; "autodiff": ``jax.grad``).  See the module docstring for the
    conventions.

    Attributes:
      classes_, n_features_in_, feature_names_in_, coefs_ (list of (fan_in, fan_out)),
      intercepts_, loss_, loss_curve_, best_loss_, validation_scores_,
      best_validation_score_, n_iter_, t_, n_layers_, n_outputs_, out_activation_
      ("logistic" for binary and multilabel, "softmax" for multiclass), params_ (our pytree).
    """

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(
            self, X, y, multi_output=True, dtype=(np.float64, np.float32), reset=reset
        )
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {classes}."
                )
        return X, self._label_binarizer.transform(y)

    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y): y class labels of any type (N,), or a 0/1 indicator (N, K)
        (multilabel); ``sample_weight`` (N,) weights the rows."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), keeping the optimizer state; ``classes`` (every label the
        calls will see) is required on the first call, unless y is multilabel."""
        first = not hasattr(self, "classes_")
        if first:
            if classes is None and not type_of_target(y).startswith("multilabel"):
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
            self.classes_ = self._label_binarizer.classes_
        elif classes is not None and not np.array_equal(
            np.sort(np.asarray(classes)), np.sort(self.classes_)
        ):
            raise ValueError(
                f"`classes={classes}` is not the same as on last call to "
                f"partial_fit, was: {self.classes_}"
            )
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, n_classes), columns in the order of ``classes_``."""
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X) -> np.ndarray:
        """log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """Labels (N,) in the type of ``classes_``, or (N, K) 0/1 for multilabel."""
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return np.asarray(self._label_binarizer.inverse_transform(y_pred))

    def _score(self, X, y, sample_weight=None) -> float:
        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (squared error), scikit-learn's interface over
    :func:`mlds_jax.fit`.  Parameters and attributes as :class:`MLPClassifier` (no
    ``classes_``; ``out_activation_`` is "identity"); y may be (N,) or (N, K)."""

    def _out_activation(self) -> str:
        return "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(
            self,
            X,
            y,
            multi_output=True,
            y_numeric=True,
            dtype=(np.float64, np.float32),
            reset=reset,
        )
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y), y (N,) or (N, K); ``sample_weight`` (N,) weights the rows."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the optimizer state between calls."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Predictions (N,) for one output, (N, K) otherwise."""
        y_pred = self._forward(X)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def _score(self, X, y, sample_weight=None) -> float:
        return r2_score(y, self.predict(X), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = False
        return tags


def load(path: str | os.PathLike) -> MLPClassifier | MLPRegressor:
    """Rebuild an estimator written by ``est.save(path)`` (no pickle: see :func:`mlds_jax.load`)."""
    with jax.enable_x64(True):  # a float64 network loads as float64 whatever the x64 setting
        params, meta = mj.load(path, return_metadata=True)
    kinds: dict[str, type[MLPClassifier] | type[MLPRegressor]] = {
        "MLPClassifier": MLPClassifier,
        "MLPRegressor": MLPRegressor,
    }
    cls = kinds.get(str(meta.get("estimator")))
    if cls is None:
        raise ValueError(f"checkpoint {os.fspath(path)!r} holds no mlds_jax.sklearn estimator")
    est = cls(
        **{**meta["params"], "hidden_layer_sizes": tuple(meta["params"]["hidden_layer_sizes"])}
    )
    est.coefs_, est.intercepts_ = _as_numpy_params(params)
    est.n_layers_ = len(params) + 1
    est.n_outputs_ = int(params[-1].W.shape[1])
    est.out_activation_ = meta["out_activation_"]
    est.n_iter_, est.t_ = meta["n_iter_"], meta["t_"]
    est.loss_curve_ = list(meta["loss_curve_"])
    est.loss_ = est.loss_curve_[-1] if est.loss_curve_ else None
    est.best_loss_ = min(est.loss_curve_) if est.loss_curve_ else None
    est.validation_scores_ = est.best_validation_score_ = None
    est.n_features_in_ = meta["n_features_in_"]
    if "feature_names_in_" in meta:
        est.feature_names_in_ = np.asarray(meta["feature_names_in_"], dtype=object)
    if "classes_" in meta:
        classes = np.asarray(meta["classes_"], dtype=np.dtype(meta["classes_dtype"]))
        lb = LabelBinarizer()
        if meta["y_type"] == "multilabel-indicator":
            lb.fit(np.eye(len(classes), dtype=int))
        else:
            lb.fit(classes)
        est._label_binarizer = lb
        est.classes_ = lb.classes_
    return est
