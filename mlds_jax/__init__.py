"""mlds_jax: exact, hand-derived backpropagation for multilayer perceptrons in JAX.

The public API; see the README for a tour and the notation table.  The top level holds the
verbs most users need (``mj.forward``, ``mj.manual_grads``, ``mj.fit``, ``mj.hvp``, ...); the
rest lives in one namespace per concept: ``mj.activations``, ``mj.losses``, ``mj.core``,
``mj.datasets``, ``mj.descent``, ``mj.extensions``, ``mj.training``, ``mj.io``, ...  A name
that used to be at the top level and moved still resolves, with a ``DeprecationWarning`` that
names its new home.
"""

import warnings as _warnings

from mlds_jax import (
    activations,
    autodiff,
    callback,
    compilation,
    core,
    datasets,
    descent,
    extensions,
    initialization,
    io,
    losses,
    network,
    parallel,
    training,
    validation,
)
from mlds_jax.autodiff import autodiff_grads, check_grads
from mlds_jax.backprop import backward_deltas, manual_grads
from mlds_jax.callback import Callback
from mlds_jax.compilation import disable_compilation_cache, enable_compilation_cache
from mlds_jax.datasets import load_dataset
from mlds_jax.descent import gradient_descent, max_stable_step_size
from mlds_jax.extensions import (
    DPSGD,
    SharpnessTracker,
    diag_ggn,
    ggn_vp,
    gradient_gram,
    gradient_moments,
    hessian_spectral_density,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    kfac_factors,
    levenberg_marquardt,
    mlp,
    per_example_diag_ggn,
    per_example_grad_norms,
    per_example_grads,
    sharpness,
)
from mlds_jax.initialization import init_mlp
from mlds_jax.io.checkpoint import load, save
from mlds_jax.layers import Dense, Params, layer_sizes
from mlds_jax.network import forward, forward_cache, loss, predict
from mlds_jax.parallel import data_parallel_mesh
from mlds_jax.plotting import plot_history
from mlds_jax.training import (
    EarlyStopping,
    History,
    Trainer,
    TrainingDivergedWarning,
    TrainStep,
    evaluate,
    fit,
    make_train_step,
)
from mlds_jax.version import __version__

__all__ = [
    "Callback",
    "DPSGD",
    "Dense",
    "EarlyStopping",
    "History",
    "Params",
    "SharpnessTracker",
    "TrainStep",
    "Trainer",
    "TrainingDivergedWarning",
    "__version__",
    "activations",
    "autodiff",
    "autodiff_grads",
    "backward_deltas",
    "callback",
    "check_grads",
    "compilation",
    "core",
    "data_parallel_mesh",
    "datasets",
    "descent",
    "diag_ggn",
    "disable_compilation_cache",
    "enable_compilation_cache",
    "evaluate",
    "extensions",
    "fit",
    "forward",
    "forward_cache",
    "ggn_vp",
    "gradient_descent",
    "gradient_gram",
    "gradient_moments",
    "hessian_spectral_density",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hvp",
    "init_mlp",
    "initialization",
    "io",
    "kfac_factors",
    "layer_sizes",
    "levenberg_marquardt",
    "load",
    "load_dataset",
    "loss",
    "losses",
    "make_train_step",
    "manual_grads",
    "max_stable_step_size",
    "mlp",
    "network",
    "parallel",
    "per_example_diag_ggn",
    "per_example_grad_norms",
    "per_example_grads",
    "plot_history",
    "predict",
    "save",
    "sharpness",
    "training",
    "validation",
]

# Names the top level held before the surface was split into namespaces (0.x): each still
# resolves, with a warning naming its home.  Kept for one release; not in ``__all__``.
_MOVED = {
    "activations": (
        "ACTIVATIONS",
        "HIDDEN_ACTIVATIONS",
        "OUTPUT_ACTIVATIONS",
        "Activation",
        "identity",
        "identity_prime",
        "identity_prime2",
        "leaky_relu",
        "leaky_relu_prime",
        "leaky_relu_prime2",
        "relu",
        "relu_prime",
        "relu_prime2",
        "sigmoid",
        "sigmoid_prime",
        "sigmoid_prime2",
        "softmax",
        "softmax_backward",
        "softplus",
        "softplus_prime",
        "softplus_prime2",
        "tanh",
        "tanh_prime",
        "tanh_prime2",
    ),
    "core": ("Backward", "ForwardCache", "dense_backward", "dense_forward", "output_delta"),
    "datasets": ("DATASETS", "Dataset", "DatasetInfo", "one_hot", "standardize"),
    "descent": ("GradientDescentResult", "quadratic_example", "sign_gradient_descent"),
    "extensions": (
        "GradientMoments",
        "LevenbergMarquardtResult",
        "PrivacyAccountant",
        "clip_factors",
        "dp_epsilon",
        "dp_value_and_grads",
        "gauss_newton_direction",
        "gradient_cross_gram",
        "network_exact_step_size",
        "network_max_stable_step_size",
        "output_jacobian",
        "smoothed_density",
    ),
    "initialization": ("INITIALIZERS",),
    "losses": ("DEFAULT_LOSS", "LOSSES", "Loss", "matched_delta"),
    "network": ("prepare_targets",),
    "parallel": ("pad_rows",),
    "compilation": ("CompilationCacheWarning", "default_cache_dir"),
    "training": ("default_loss",),
    "autodiff": ("GradCheckReport", "LeafCheck"),
}
_HOME = {name: module for module, names in _MOVED.items() for name in names}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'mlds_jax' has no attribute {name!r}")
    _warnings.warn(
        f"mlds_jax.{name} moved to mlds_jax.{module}.{name} (the top level keeps the verbs; "
        f"the rest lives in namespaces); the old name will be removed",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(globals()[module], name)
