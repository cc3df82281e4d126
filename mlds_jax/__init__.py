"""mlds_jax: exact, hand-derived backpropagation for multilayer perceptrons in JAX.

The public API; see the README for a tour and the notation table.
"""

from mlds_jax import core, validation
from mlds_jax.activations import (
    ACTIVATIONS,
    HIDDEN_ACTIVATIONS,
    OUTPUT_ACTIVATIONS,
    Activation,
    identity,
    identity_prime,
    identity_prime2,
    leaky_relu,
    leaky_relu_prime,
    leaky_relu_prime2,
    relu,
    relu_prime,
    relu_prime2,
    sigmoid,
    sigmoid_prime,
    sigmoid_prime2,
    softmax,
    softmax_backward,
    softplus,
    softplus_prime,
    softplus_prime2,
    tanh,
    tanh_prime,
    tanh_prime2,
)
from mlds_jax.autodiff import GradCheckReport, LeafCheck, autodiff_grads, check_grads
from mlds_jax.backprop import backward_deltas, manual_grads
from mlds_jax.checkpoint import load, load_checkpoint, save, save_checkpoint
from mlds_jax.compilation import (
    CompilationCacheWarning,
    default_cache_dir,
    enable_compilation_cache,
)
from mlds_jax.core import Backward, ForwardCache, dense_backward, dense_forward, output_delta
from mlds_jax.datasets import DATASETS, Dataset, DatasetInfo, load_dataset, one_hot, standardize
from mlds_jax.descent import (
    GradientDescentResult,
    gradient_descent,
    max_stable_step_size,
    quadratic_example,
    sign_gradient_descent,
)
from mlds_jax.initialization import INITIALIZERS, init_mlp
from mlds_jax.layers import Dense, Params, layer_sizes
from mlds_jax.losses import DEFAULT_LOSS, LOSSES, Loss, matched_delta
from mlds_jax.network import forward, forward_cache, loss, predict, prepare_targets
from mlds_jax.parallel import data_parallel_mesh, pad_rows
from mlds_jax.training import (
    EarlyStopping,
    History,
    TrainingDivergedWarning,
    TrainStep,
    default_loss,
    evaluate,
    fit,
    make_train_step,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Backward",
    "CompilationCacheWarning",
    "DATASETS",
    "DEFAULT_LOSS",
    "Dataset",
    "DatasetInfo",
    "Dense",
    "EarlyStopping",
    "ForwardCache",
    "GradCheckReport",
    "GradientDescentResult",
    "HIDDEN_ACTIVATIONS",
    "History",
    "INITIALIZERS",
    "LOSSES",
    "LeafCheck",
    "Loss",
    "OUTPUT_ACTIVATIONS",
    "Params",
    "TrainStep",
    "TrainingDivergedWarning",
    "__version__",
    "autodiff_grads",
    "backward_deltas",
    "check_grads",
    "core",
    "data_parallel_mesh",
    "default_cache_dir",
    "default_loss",
    "dense_backward",
    "dense_forward",
    "enable_compilation_cache",
    "evaluate",
    "fit",
    "forward",
    "forward_cache",
    "gradient_descent",
    "identity",
    "identity_prime",
    "identity_prime2",
    "init_mlp",
    "layer_sizes",
    "leaky_relu",
    "leaky_relu_prime",
    "leaky_relu_prime2",
    "load",
    "load_checkpoint",
    "load_dataset",
    "loss",
    "make_train_step",
    "manual_grads",
    "matched_delta",
    "max_stable_step_size",
    "one_hot",
    "output_delta",
    "pad_rows",
    "predict",
    "prepare_targets",
    "quadratic_example",
    "relu",
    "relu_prime",
    "relu_prime2",
    "save",
    "save_checkpoint",
    "sigmoid",
    "sigmoid_prime",
    "sigmoid_prime2",
    "sign_gradient_descent",
    "softmax",
    "softmax_backward",
    "softplus",
    "softplus_prime",
    "softplus_prime2",
    "standardize",
    "tanh",
    "tanh_prime",
    "tanh_prime2",
    "validation",
]
