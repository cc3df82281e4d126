"""Training: the compiled step, the :class:`Trainer` and its compiled epochs, ``fit``.

One concept per module:

* :mod:`~mlds_jax.training.step`: one step (gradients, (R1), the optax update); ``TrainStep``;
* :mod:`~mlds_jax.training.batching`: row buckets, the batch plan, the per-epoch shuffles;
* :mod:`~mlds_jax.training.program`: when a compiled program may be reused (what it computes);
* :mod:`~mlds_jax.training.epoch`: the compiled epoch and chunk of epochs;
* :mod:`~mlds_jax.training.trainer`: :class:`Trainer`, ``TrainState``, ``TrainData``;
* :mod:`~mlds_jax.training.stopping`: early stopping and divergence;
* :mod:`~mlds_jax.training.run`: a run in progress (:class:`Run`) and its :class:`History`;
* :mod:`~mlds_jax.training.callbacks`: progress, verbose log, per-epoch function, checkpoints;
* :mod:`~mlds_jax.training.split`: the validation split;
* :mod:`~mlds_jax.training.evaluate`: ``evaluate``;
* :mod:`~mlds_jax.training.fit`: ``fit``, the loop.

Training imports no extension: DP-SGD comes in as a gradient source (``dp=``), its privacy
accounting and sharpness tracking as callbacks (:mod:`mlds_jax.callback`).
"""

from mlds_jax.training.batching import shuffle_order
from mlds_jax.training.callbacks import (
    Checkpoint,
    EpochEndFunction,
    ProgressBar,
    VerboseLog,
    in_jupyter_kernel,
)
from mlds_jax.training.evaluate import evaluate
from mlds_jax.training.fit import fit
from mlds_jax.training.run import History, Run
from mlds_jax.training.split import validation_split_indices
from mlds_jax.training.step import (
    GradientSource,
    TrainStep,
    default_loss,
    l2_penalty,
    make_train_step,
)
from mlds_jax.training.stopping import EarlyStopping, TrainingDivergedWarning
from mlds_jax.training.trainer import ChunkResult, TrainData, Trainer, TrainState

__all__ = [
    "Checkpoint",
    "ChunkResult",
    "EarlyStopping",
    "EpochEndFunction",
    "GradientSource",
    "History",
    "ProgressBar",
    "Run",
    "TrainData",
    "TrainState",
    "TrainStep",
    "Trainer",
    "TrainingDivergedWarning",
    "VerboseLog",
    "default_loss",
    "evaluate",
    "fit",
    "in_jupyter_kernel",
    "l2_penalty",
    "make_train_step",
    "shuffle_order",
    "validation_split_indices",
]
