"""The ``mlds-jax`` command: a thin layer over the public API.

  mlds-jax train        train an MLP on a bundled data set (default: digits, manual gradients)
                        or on your own table (--data file.csv|file.npz)
  mlds-jax predict      a saved model's predictions for a table's rows, as CSV
  mlds-jax evaluate     score a saved model on a data set's test split or on a table
  mlds-jax gradcheck    manual vs jax.grad vs finite differences, per leaf

Exit status: 0 success; 1 ``gradcheck`` found a failing leaf; 2 a bad option or value, a
bad file or table or a model too large for memory (one line on stderr, never a traceback); 3
training diverged (non-finite loss or parameters: one line on stderr, nothing written to
``--out``); 130 interrupted by Ctrl-C, 143 terminated by SIGTERM (with ``--out``, the last
completed epoch is saved first for ``--resume``); 141 the reader of stdout went away (``|
head``: no message, as for SIGPIPE).

Your own data: ``train --data PATH`` reads a CSV file with a header (``--target COLUMN``,
repeatable, names the target columns; default the last column) or an ``.npz`` with X and y,
infers the task from the targets (integers or text: classification, the label names kept;
other numbers: regression; several 0/1 columns: multi-label) unless ``--task`` says, and
standardises every feature (and regression target) with the training rows' statistics (see
:mod:`mlds_jax.tabular`; text features are refused, not one-hot encoded).  ``model.npz``
records that preprocessing and the label names, so ``predict --data`` and ``evaluate --data``
apply it to new raw rows (bundled data sets' models too).

Defaults, per task (measured so that every bundled data set reaches at least a linear
model's test score on the same split, under adam, sgd and momentum): classification one
hidden layer of 32 tanh units; regression 64 relu units with weight decay ``--l2 3``
(scikit-learn's alpha); learning rates in :data:`DEFAULT_LR`; up to ``--epochs 200``, with
early stopping on the val loss that keeps the best epoch (``--patience 50`` epochs without
improvement end the run; ``--patience 0`` trains every epoch and keeps the last).
``--validation-fraction 0`` trains on all training rows, without early stopping.

``--optimizer lm`` trains by Levenberg–Marquardt (:func:`mlds_jax.levenberg_marquardt`,
MATLAB's ``trainlm`` with its defaults) instead of an optax optimizer: full batch, the
damping μ adapted from 0.001 (no ``--lr``), ``--epochs`` the most iterations (accepted
steps), early stopping by trainlm's validation checks on the same held-out rows as ``fit``'s
(``--patience`` validation failures in a row, default :data:`LM_MAX_FAIL` = 6; the iteration
with the best val loss is kept), ``--l2`` the same penalty as full-batch training.  It also
stops when the gradient norm falls to 1e-7 or no damped step lowers the loss.  The files of
``--out`` are the same (``history.json`` per iteration, with the damping μ of each; no
``train_state.npz``).  Not with ``--lr``, ``--batch-size``, ``--dp-clip/--dp-noise``,
``--data-parallel``, ``--track-sharpness``, ``--grads autodiff`` or ``--resume`` (exit 2).

Multi-label "accuracy" is exact match (every label of a row right, scikit-learn's ``score``)
and "label_accuracy" the fraction of single labels right, in the printout, history files and
summary alike.

``train --out DIR`` publishes its files in ``DIR`` as one complete set when the run ends; while
it runs, its training state lives in ``DIR.partial/`` beside it, which ``--resume`` continues
(:mod:`mlds_jax.io.run_directory`): an interrupted, killed or failed run leaves an earlier run's
``DIR`` exactly as it was.

``train`` holds out ``--validation-fraction`` of the training rows (stratified) for the epoch
log and early stopping; the test split is scored once, at the end.  Logs, history, plots and
JSON name the three splits train / val / test.

Compiled programs are kept in JAX's persistent compilation cache, so a second run skips most
of the compiling: ``$MLDS_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlds-jax/jax``, else
``~/.cache/mlds-jax/jax`` (see :mod:`mlds_jax.compilation`).  ``--no-compilation-cache`` turns
it off; delete the directory to clear it.  An unusable directory only warns.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from mlds_jax.callback import Callback

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a process killed by it
EXIT_TERMINATED = 143
#: ``--optimizer``: the optax ones, and "lm", Levenberg–Marquardt (full batch, no learning rate).
OPTIMIZERS = ("sgd", "momentum", "adam", "lm")
#: The default learning rate per task ("classification" or "regression") and optax optimizer
#: (none for "lm": Levenberg–Marquardt adapts its damping instead).
DEFAULT_LR = {
    "classification": {"sgd": 0.1, "momentum": 0.01, "adam": 1e-3},
    "regression": {"sgd": 0.01, "momentum": 0.001, "adam": 1e-3},
}
#: The default network and regularisation per task (``--hidden-sizes``, ``--activation``,
#: ``--l2``).  Small tabular data overfit a wide net: one hidden layer; for regression
#: (diabetes: 318 noisy rows) weight decay as well.
TASK_DEFAULTS = {
    "classification": {"hidden_sizes": [32], "activation": "tanh", "l2": 0.0},
    "regression": {"hidden_sizes": [64], "activation": "relu", "l2": 3.0},
}
DEFAULT_EPOCHS = 200
DEFAULT_PATIENCE = 50
DEFAULT_BATCH_SIZE = 32
#: The default ``--patience`` of ``--optimizer lm``: trainlm's max_fail validation checks.
LM_MAX_FAIL = 6
#: The initial damping μ of ``--optimizer lm`` (trainlm's mu).
LM_DAMPING = 1e-3
#: How a Levenberg–Marquardt stop reason is named in the summary where ``fit`` has the same
#: one (the others, "min_grad", "max_damping", ..., keep their names).
LM_STOP_REASONS = {"max_iter": "completed", "validation": "early_stopping"}


class UsageError(Exception):
    """A bad option or value: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {message}{self._hint(message)} (see {self.prog} --help)\n",
        )

    def _hint(self, message: str) -> str:
        """A "did you mean" for a misspelt subcommand, option value or option."""
        from mlds_jax import validation

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            return validation.did_you_mean(
                choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
            )
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        if unknown and unknown.group(1).startswith("--"):
            word = unknown.group(1).split("=")[0]
            return validation.did_you_mean(word, sorted(self._every_option()))
        return ""

    def _every_option(self) -> set[str]:
        names: set[str] = set()
        for action in self._actions:
            names.update(o for o in action.option_strings if o.startswith("--"))
            for sub in getattr(action, "choices", None) or ():
                if isinstance(action.choices, dict):
                    names |= action.choices[sub]._every_option()
        return names


def _int_list(text: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 128,64 (or 'none'), got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return values


def _checked(kind, ok, expected: str, must: str):
    """An argparse ``type``: ``kind(text)``, then ``ok(value)``, each failure named."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must {must}, got {text!r}")
        return value

    return parse


def _positive(kind):
    if kind is int:
        return _checked(int, lambda v: v >= 1, "a whole number", "be a whole number >= 1")
    # nan and inf too: --lr inf diverges at once
    return _checked(kind, lambda v: 0 < v < float("inf"), "a number", "be a finite number > 0")


_fraction = _checked(float, lambda v: 0 < v < 1, "a number", "lie strictly between 0 and 1")
_fraction_or_zero = _checked(float, lambda v: 0 <= v < 1, "a number", "lie in [0, 1)")
_non_negative_int = _checked(int, lambda v: v >= 0, "a whole number", "be a whole number >= 0")
_non_negative_float = _checked(
    float, lambda v: 0 <= v < float("inf"), "a float", "be a finite number >= 0"
)
# numpy's and the data splits' seed range
_seed = _checked(int, lambda v: 0 <= v < 2**32, "an int", "lie in [0, 2**32)")


def build_parser() -> argparse.ArgumentParser:
    from mlds_jax import __version__
    from mlds_jax.activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
    from mlds_jax.datasets import DATASETS
    from mlds_jax.losses import LOSSES
    from mlds_jax.tabular import TASKS

    parser = _Parser(
        prog="mlds-jax",
        description="Hand-derived backpropagation for MLPs in JAX, cross-checked by jax.grad.",
    )
    parser.add_argument(
        "--version", action="version", version=f"mlds-jax {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train an MLP on a bundled data set (default: digits) or your own table",
        description="Train an MLP with hand-derived gradients and report its test score.  With "
        "no options: digits, 64-32-10 tanh/softmax, adam, up to 200 epochs keeping the best "
        "val_loss epoch.  Defaults per task: classification 32 tanh units, lr sgd 0.1 / "
        "momentum 0.01 / adam 0.001; regression 64 relu units, --l2 3, lr sgd 0.01 / "
        "momentum 0.001 / adam 0.001.  --optimizer lm: Levenberg-Marquardt, full batch, up "
        f"to --epochs iterations, early stopping after {LM_MAX_FAIL} validation checks "
        "(trainlm's max_fail).",
    )
    data = t.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        choices=sorted(DATASETS),
        help="bundled or generated data set (default: digits, unless --data)",
    )
    data.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="your own table: a CSV file with a header, or an .npz with X (rows, features) "
        "and y; every column but the targets is a numeric feature, standardised with the "
        "training rows' statistics (recorded in model.npz for predict/evaluate)",
    )
    data.add_argument(
        "--target",
        action="append",
        default=None,
        metavar="COLUMN",
        help="a target column of the CSV (repeat for several outputs; default: the last column)",
    )
    data.add_argument(
        "--task",
        default=None,
        choices=TASKS,
        help="default: inferred from the targets (integers or text: classification, with the "
        "label names kept; other numbers: regression; several 0/1 columns: multi-label)",
    )
    t.add_argument(
        "--hidden-sizes",
        type=_int_list,
        default=None,
        metavar="H1,H2",
        help="hidden layer widths; 'none' for no hidden layer (default: 32 for "
        "classification, 64 for regression)",
    )
    t.add_argument(
        "--activation",
        default=None,
        choices=HIDDEN_ACTIVATIONS,
        help="hidden activation (default: tanh for classification, relu for regression)",
    )
    t.add_argument(
        "--loss",
        default=None,
        choices=sorted(LOSSES),
        help="loss (default: the task's: cross_entropy, binary_cross_entropy or mse)",
    )
    t.add_argument(
        "--optimizer",
        default="adam",
        choices=OPTIMIZERS,
        help="optax optimizer, or lm: Levenberg-Marquardt (MATLAB's trainlm) on the whole "
        "training set, its damping adapted from 0.001 (no --lr or --batch-size; --epochs is "
        f"its most iterations, --patience its validation checks, default {LM_MAX_FAIL}) "
        "(default: adam)",
    )
    t.add_argument(
        "--lr",
        type=_positive(float),
        default=None,
        help="learning rate (default per task: classification sgd 0.1, momentum 0.01, adam "
        "0.001; regression sgd 0.01, momentum 0.001, adam 0.001; none with lm)",
    )
    t.add_argument(
        "--l2",
        type=_non_negative_float,
        default=None,
        metavar="ALPHA",
        help="weight decay, scikit-learn's alpha: each batch's loss plus ALPHA/(2 B) times the "
        "squared weights (lm: B is every training row) (default: 0 for classification, 3 for "
        "regression)",
    )
    t.add_argument(
        "--epochs",
        type=_positive(int),
        default=DEFAULT_EPOCHS,
        help=f"most epochs (lm: iterations); with --resume the total (default: {DEFAULT_EPOCHS})",
    )
    t.add_argument(
        "--batch-size",
        type=_positive(int),
        default=None,
        help=f"minibatch size (default: {DEFAULT_BATCH_SIZE}; lm uses every row)",
    )
    t.add_argument(
        "--grads",
        default="manual",
        choices=("manual", "autodiff"),
        help="gradient source (default: manual, the hand-derived backprop)",
    )
    t.add_argument("--seed", type=_seed, default=0, help="seed for init, split and shuffles")
    t.add_argument("--test-size", type=_fraction, default=0.2, help="test fraction (default: 0.2)")
    t.add_argument(
        "--validation-fraction",
        type=_fraction_or_zero,
        default=0.1,
        metavar="F",
        help="fraction of the training rows held out (stratified) for the val metrics and "
        "early stopping; 0 trains on all of them, without early stopping; the test split is "
        "scored once, at the end (default: 0.1)",
    )
    t.add_argument(
        "--patience",
        "--early-stopping",
        dest="patience",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help=f"early stopping: end the run when the val loss has not improved for N epochs "
        f"(lm: iterations, trainlm's max_fail) and keep the best epoch's model; 0 trains "
        f"every epoch and keeps the last (default: {DEFAULT_PATIENCE}, lm {LM_MAX_FAIL}; needs "
        f"validation rows)",
    )
    t.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="publish model.npz, history.json, history.csv, curves.png and train_state.npz "
        "(not with lm) here, as one set when the run ends (its state meanwhile: DIR.partial/)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run of --out DIR: the interrupted one in DIR.partial/ (its state "
        "is written every epoch and on Ctrl-C/SIGTERM), else the finished one in DIR, which "
        "continues when --epochs (the total) is more than it has done; the same options, but "
        "--epochs, --patience and the display ones (a changed one is refused, named)",
    )
    t.add_argument(
        "--data-parallel",
        action="store_true",
        help="shard every minibatch over all local devices (jax.sharding mesh)",
    )
    t.add_argument(
        "--dp-clip",
        type=_positive(float),
        default=None,
        metavar="C",
        help="DP-SGD: clip every example's gradient to norm C (with --dp-noise)",
    )
    t.add_argument(
        "--dp-noise",
        type=_non_negative_float,
        default=None,
        metavar="SIGMA",
        help="DP-SGD: noise multiplier sigma >= 0 (with --dp-clip); prints epsilon at the end",
    )
    t.add_argument(
        "--track-sharpness",
        type=_positive(int),
        default=None,
        metavar="K",
        help="record the Hessian's top eigenvalue every K epochs; plotted against 2/lr",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar or epoch log")
    _add_cache_flag(t)

    p = sub.add_parser(
        "predict",
        help="a saved model's predictions for a table's rows (CSV)",
        description="Apply a model written by 'train --out' to the rows of a CSV or .npz "
        "file: the features are read by name (an .npz's X by position) and standardised as "
        "in training; the predictions (class names, 0/1 labels or values in the target's "
        "units) are written as CSV, one row per input row, headed by the target names.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a model.npz")
    p.add_argument(
        "--data", required=True, metavar="PATH", help="CSV with a header, or .npz with X"
    )
    p.add_argument(
        "--out", default=None, metavar="FILE", help="write the CSV here (default: stdout)"
    )

    g = sub.add_parser(
        "gradcheck",
        help="manual vs jax.grad vs finite differences",
        description="Compare hand-derived gradients with jax.grad and central "
        "differences in float64, per leaf.  Exit status 1 if any leaf fails.",
    )
    g.add_argument(
        "--sizes",
        type=_int_list,
        default=[5, 7, 4, 3],
        metavar="N0,...,NL",
        help="layer sizes including input and output (default: 5,7,4,3)",
    )
    g.add_argument("--activation", default="sigmoid", choices=HIDDEN_ACTIVATIONS)
    g.add_argument("--output", default="softmax", choices=OUTPUT_ACTIVATIONS)
    g.add_argument(
        "--loss",
        default=None,
        choices=sorted(LOSSES),
        help="default: cross_entropy for softmax, binary_cross_entropy for sigmoid, "
        "else half_squared_error",
    )
    g.add_argument("--batch", type=_positive(int), default=8, help="rows of random data")
    g.add_argument(
        "--general",
        action="store_true",
        help="check the general chain-rule output δ instead of the fused one",
    )
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--json", action="store_true", help="print the report as JSON")

    e = sub.add_parser(
        "evaluate",
        help="score a model on a data set's test split or on a table",
        description="Score a saved model: on the test split of the bundled data set it was "
        "trained on (or --dataset), or on every row of a table (--data, with its target "
        "columns; preprocessed as in training).",
    )
    e.add_argument("--checkpoint", required=True, metavar="PATH")
    e.add_argument(
        "--dataset",
        default=None,
        choices=sorted(DATASETS),
        help="default: the data set recorded in the checkpoint",
    )
    e.add_argument(
        "--data", default=None, metavar="PATH", help="score on this CSV or .npz table instead"
    )
    e.add_argument("--loss", default=None, choices=sorted(LOSSES))
    e.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help="split seed (default: the one recorded in the checkpoint)",
    )
    e.add_argument("--test-size", type=_fraction, default=None)
    _add_cache_flag(e)
    return parser


def _add_cache_flag(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not read or write the persistent compilation cache "
        "($MLDS_JAX_CACHE_DIR, default ~/.cache/mlds-jax/jax)",
    )


def _enable_cache(args) -> None:
    """The persistent compilation cache, unless --no-compilation-cache (never fails a run)."""
    from mlds_jax.compilation import disable_compilation_cache, enable_compilation_cache

    if getattr(args, "no_compilation_cache", True):
        disable_compilation_cache()  # not even the library's default
        return

    try:
        enable_compilation_cache()
    except Exception as exc:  # noqa: BLE001 (a cache must never stop a run)
        print(f"mlds-jax: warning: compilation cache not used: {exc}", file=sys.stderr)


def _optimizer(name: str, lr: float):
    """The optax optimizer ``name`` ("lm" is none: :func:`_train_lm` runs it)."""
    import optax

    if name == "lm":
        raise ValueError("lm is not an optax optimizer: it trains by mj.levenberg_marquardt")
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return optax.adam(lr)


def _cli_history(history: dict, dtype) -> dict:
    """The history as the CLI writes it: train_/val_ names; metrics as shown (:func:`_shown`)."""
    renamed = {}
    for k, v in history.items():
        plain = k in _PLAIN_KEYS
        name = k if k.startswith("val_") or plain else "train_" + k
        renamed[name] = list(v) if k in _HOST_KEYS else [_shown(x, dtype) for x in v]
    return renamed


#: History keys that are not metrics of the training rows.
_PLAIN_KEYS = ("time", "epsilon", "sharpness", "sharpness_epoch")
#: History keys computed on the host in float64 (everything else in the data's dtype).
_HOST_KEYS = ("time", "epsilon")


def _shown(x, dtype):
    """A value computed in ``dtype`` as the user saw it: a float32 result as its shortest
    float32 repr (0.09722222, not 0.0972222238779068); anything else as it is."""
    import numpy as np

    if isinstance(x, float) and np.dtype(dtype) == np.float32 and abs(x) < 3e38:
        return float(str(np.float32(x)))
    return x


def _history_files(history: dict, summary: dict) -> dict[str, bytes]:
    import io

    payload = {"summary": summary, "history": history}
    buf = io.StringIO()
    csv.writer(buf).writerows(_history_rows(history))
    return {
        "history.json": json.dumps(payload, indent=2).encode(),
        "history.csv": buf.getvalue().encode(),
    }


def _dp_report(dp, history: dict, n: int) -> str:
    """One line: the privacy spent, or why no ε is shown."""
    head = f"DP-SGD (clip {dp.l2_clip:g}, noise {dp.noise_multiplier:g}): "
    if dp.noise_multiplier == 0:
        return head + "no noise, so no privacy guarantee (epsilon = inf)"
    if history.get("epsilon"):
        return head + f"epsilon = {history['epsilon'][-1]:.4g} at delta = 1/N = {1 / n:.3g}"
    if not history.get("loss"):
        return head + "no epoch finished: no epsilon"
    return head + "epsilon not computed: pip install 'mlds-jax[dp]' (dp-accounting)"


def _history_rows(history: dict) -> list[list]:
    """Per-epoch CSV rows; the sharpness (every K epochs) goes in the rows of its epochs."""
    n = len(history.get("train_loss", []))
    keys = [k for k in history if k != "sharpness_epoch"]
    at = dict(zip(history.get("sharpness_epoch", []), history.get("sharpness", []), strict=True))
    rows = [["epoch", *keys]]
    for i in range(n):
        rows.append(
            [i + 1, *(at.get(i + 1, "") if k == "sharpness" else history[k][i] for k in keys)]
        )
    return rows


def _plot_history(
    history: dict, title: str, *, lr: float | None = None, optimizer: str = "sgd"
) -> bytes:
    """curves.png's bytes: :func:`mlds_jax.plot_history` of the CLI's history, drawn off
    screen (the Agg backend)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ImportError(
            "writing curves.png needs matplotlib: pip install 'mlds-jax[plot]'"
        ) from None

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from mlds_jax.plotting import plot_history

    fig = plot_history(history, title=title, lr=lr, optimizer=optimizer)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _epoch_logger(epochs: int, unit: str = "epoch"):
    every = max(1, epochs // 10)

    def log(e: int, metrics: dict, last: bool = False) -> None:
        if (e + 1) % every == 0 or e == 0 or e + 1 == epochs or last:
            shown = "  ".join(
                f"{'' if k.startswith('val_') else 'train_'}{k} {v:.4g}"
                for k, v in metrics.items()
                if k not in _PLAIN_KEYS
            )
            print(f"{unit} {e + 1:>4}/{epochs}  {shown}", flush=True)

    return log


def _loss_targets(task: str, y, n_classes: int | None, loss: str, dtype, name: str):
    """Targets ``y`` (a :class:`~mlds_jax.datasets.Dataset`'s form: int labels, 0/1 label
    columns, or real values) in the form ``loss`` needs, or a UsageError."""
    import numpy as np

    from mlds_jax.datasets import one_hot
    from mlds_jax.losses import LOSSES

    kind = LOSSES[loss].targets
    if task == "regression":
        if kind != "real":
            raise UsageError(
                f"--loss {loss} needs class labels, but {name} is a regression data set: "
                f"use --loss mse or half_squared_error"
            )
        return y
    if task == "multilabel":
        if kind == "class":
            raise UsageError(
                f"--loss {loss} needs one class per row, but {name} has several 0/1 label "
                f"columns: use --loss binary_cross_entropy (the default)"
            )
        return np.asarray(y).astype(dtype)
    assert n_classes is not None
    if kind == "class":  # integer labels; a binary task gets two softmax outputs
        return y
    if task == "binary":  # (n, 1) 0/1 targets: sigmoid/BCE, or a regression loss
        return np.asarray(y).astype(dtype).reshape(-1, 1)
    return one_hot(y, n_classes, dtype=dtype)  # multiclass with BCE or a regression loss


def _targets(ds, loss: str):
    """(Y_train, Y_test, n_outputs) in the form ``loss`` needs, or UsageError up front."""
    from mlds_jax.losses import LOSSES

    k = ds.n_outputs if ds.task in ("multiclass", "multilabel", "regression") else 2
    if ds.task == "binary" and LOSSES[loss].targets != "class":
        k = 1
    return (
        _loss_targets(ds.task, ds.y_train, ds.n_classes, loss, ds.dtype, ds.name),
        _loss_targets(ds.task, ds.y_test, ds.n_classes, loss, ds.dtype, ds.name),
        k,
    )


def _check_fits_in_memory(sizes: list[int], dtype, device, optimizer: str) -> None:
    """UsageError naming the sizes when params, gradients and optimizer state cannot fit."""
    import numpy as np

    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    # params, grads, best, state; lm: theta, best, trial, gradient, Marquardt scale, CG's
    # vectors (its dense solve is capped by check_gn_solver at 2048 parameters: a few MiB)
    copies = {"sgd": 3, "momentum": 4, "adam": 5, "lm": 10}.get(optimizer, 5)
    need = n_params * np.dtype(dtype).itemsize * copies
    limit = None
    try:
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
    except Exception:  # noqa: BLE001 (not every backend reports)
        limit = None
    if limit is None:
        try:
            limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
    if need > limit:
        raise UsageError(
            f"model too large: MLP {'-'.join(map(str, sizes))} has {n_params:,} parameters; "
            f"training it with {optimizer} needs about {need / 2**30:.1f} GiB, but the "
            f"{device.platform.upper()} has {limit / 2**30:.1f} GiB"
        )


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so training stops like on Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated


@contextlib.contextmanager
def _run_directory(args):
    """The run directory of ``--out`` (None without it), entered and finally closed; a
    problem with it is a UsageError, found before any data is loaded."""
    if not args.out:
        yield None
        return
    from mlds_jax.io.run_directory import RunDirectory

    run = RunDirectory(args.out, resume=args.resume)
    try:
        run.__enter__()
    except (ValueError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--out {args.out!r}: {reason}") from None
    try:
        yield run
    finally:
        run.close()


def _check_lm_options(args) -> None:
    """UsageError for an option that ``--optimizer lm`` does not take (before any training)."""
    if args.optimizer != "lm":
        return
    refused = (
        (
            args.lr is not None,
            "--lr does not apply to --optimizer lm: Levenberg-Marquardt has no learning rate "
            "(it adapts its damping mu from 0.001, as trainlm)",
        ),
        (
            args.batch_size is not None,
            "--batch-size does not apply to --optimizer lm: every iteration uses all the "
            "training rows",
        ),
        (
            args.dp_clip is not None or args.dp_noise is not None,
            "--dp-clip/--dp-noise (DP-SGD) cannot be combined with --optimizer lm",
        ),
        (args.data_parallel, "--data-parallel cannot be combined with --optimizer lm"),
        (
            args.track_sharpness is not None,
            "--track-sharpness cannot be combined with --optimizer lm",
        ),
        (
            args.grads == "autodiff",
            "--grads autodiff cannot be combined with --optimizer lm: its gradients and "
            "Gauss-Newton products are the hand-derived ones",
        ),
        (
            args.resume,
            "--resume cannot be combined with --optimizer lm: it saves no training state "
            "(train again with the --epochs you want)",
        ),
    )
    for bad, message in refused:
        if bad:
            raise UsageError(message)


def cmd_train(args) -> int:
    import mlds_jax as mj

    _check_lm_options(args)
    if (args.dp_clip is None) != (args.dp_noise is None):
        raise UsageError("--dp-clip C and --dp-noise SIGMA go together: give both or neither")
    dp = None if args.dp_clip is None else mj.DPSGD(args.dp_clip, args.dp_noise)
    if dp is not None and args.data_parallel:
        raise UsageError("--dp-clip/--dp-noise cannot be combined with --data-parallel")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR (the run's state lives in DIR.partial/)")
    if args.data is not None and args.dataset is not None:
        raise UsageError("--dataset and --data name the data twice: give one")
    if args.data is None and (args.target or args.task):
        raise UsageError("--target and --task describe a table: use them with --data PATH")
    if args.validation_fraction == 0 and args.patience:
        raise UsageError(
            "--patience needs validation rows to watch: --validation-fraction 0 trains on "
            "every row without early stopping"
        )
    with _run_directory(args) as run:
        return _train(args, dp, run)


def _load_data(args):
    """(dataset, preprocessing, description) for --data or --dataset."""
    from mlds_jax.datasets import load_dataset
    from mlds_jax.tabular import Preprocessing, load_table

    if args.data is not None:
        ds, prep = load_table(args.data, args.target, args.task, args.test_size, args.seed)
        targets = ", ".join(repr(t) for t in prep.targets)
        if prep.classes is not None:
            what = f"{targets}: {len(prep.classes)} classes"
        else:
            what = f"{targets}"
        return ds, prep, f"{ds.task}, target {what}; {ds.n_features} features standardised"
    ds = load_dataset(args.dataset or "digits", test_size=args.test_size, seed=args.seed)
    return ds, Preprocessing.of_dataset(ds), ds.task


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _ResumeNote(Callback):
    """A training callback (after the checkpoint's) that prints where a resumed run
    continues: "resuming from epoch N of M"."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.start = 0

    def on_train_begin(self, run) -> None:
        done = self.checkpoint.resumed_from
        if done is None:
            return
        self.start = done
        if done >= run.epochs:
            note = ": nothing left to train (--epochs is the total: ask for more to continue)"
        elif self.checkpoint.resumed_stop_reason not in (None, "completed"):
            why = str(self.checkpoint.resumed_stop_reason).replace("_", " ")
            note = f" (the run had ended by {why}; it continues to epoch {run.epochs})"
        else:
            note = ""
        print(f"resuming from epoch {done} of {run.epochs}{note}", flush=True)


class _Trained(NamedTuple):
    """What a training run gives the report: the params, the history as the CLI writes it,
    iterations/epochs run (``start`` of them before a resume), the stop reason, the kept
    epoch (1-based, or None), extra summary entries and fit's own history (or None)."""

    params: Any
    history: dict
    n_run: int
    start: int
    stop_reason: str
    best: int | None
    extra: dict
    fit_history: Any


def _train(args, dp, run) -> int:
    """Train, report, and publish the run's files in ``run`` (if any) as one set."""
    import jax

    import mlds_jax as mj
    from mlds_jax.extensions.gauss_newton import check_gn_solver
    from mlds_jax.io.checkpoint import checkpoint_bytes
    from mlds_jax.losses import LOSSES
    from mlds_jax.training import validation_split_indices

    ds, prep, described = _load_data(args)
    group = "regression" if ds.task == "regression" else "classification"
    defaults = TASK_DEFAULTS[group]
    hidden = defaults["hidden_sizes"] if args.hidden_sizes is None else args.hidden_sizes
    activation = args.activation or defaults["activation"]
    l2 = defaults["l2"] if args.l2 is None else args.l2
    loss = args.loss or ds.default_loss
    Y_train, Y_test, n_out = _targets(ds, loss)
    allowed = LOSSES[loss].outputs  # the registry says which outputs a loss needs
    output = allowed[0] if allowed else ds.default_output
    sizes = [ds.n_features, *hidden, n_out]
    lm = args.optimizer == "lm"
    lr = None if lm else args.lr if args.lr is not None else DEFAULT_LR[group][args.optimizer]
    batch_size = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    validate = args.validation_fraction > 0
    default_patience = LM_MAX_FAIL if lm else DEFAULT_PATIENCE
    patience = (default_patience if args.patience is None else args.patience) if validate else 0
    device = jax.devices()[0]
    _check_fits_in_memory(sizes, ds.dtype, device, args.optimizer)
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    # the data's dtype (float32), whatever JAX's x64 setting: the same run everywhere
    params = mj.init_mlp(key_init, sizes, hidden=activation, output=output, dtype=ds.dtype)
    mesh = mj.data_parallel_mesh(jax.local_devices()) if args.data_parallel else None
    n_dev = len(jax.local_devices())
    kind = "" if device.device_kind.lower() == device.platform.lower() else f" {device.device_kind}"
    where = (
        f"{n_dev} {device.platform.upper()} device{'s' if n_dev > 1 else ''} (data parallel)"
        if mesh is not None
        else f"{device.platform.upper()}{kind}"
    )
    stratify = LOSSES[loss].is_classification  # as fit's split
    split = (
        validation_split_indices(key_fit, Y_train, args.validation_fraction, stratify=stratify)
        if validate
        else None
    )
    n_val = 0 if split is None else len(split[1])
    rows = {"n_train": len(ds.X_train) - n_val, "n_val": n_val, "n_test": len(ds.X_test)}
    acts = f"{activation}/{output}" if hidden else output
    decay = f", l2 {l2:g}" if l2 else ""
    if lm:
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        solver = check_gn_solver("auto", n_params, rows["n_train"], n_out)
        method = f"lm(mu={LM_DAMPING:g}, {solver} solve){decay}, full batch"
    else:
        solver = None
        method = f"{args.optimizer}(lr={lr:g}){decay}, batch {batch_size}"
    print(
        f"mlds-jax train: {ds.name} ({described}; {rows['n_train']} train / {n_val} val "
        f"/ {rows['n_test']} test rows), MLP {'-'.join(map(str, sizes))} {acts}, loss {loss}, "
        f"{method}, {args.grads} gradients, on {where}",
        flush=True,
    )
    unit = "iteration" if lm else "epoch"
    most = f"up to {_plural(args.epochs, unit)}" if lm else _plural(args.epochs, unit)
    if patience:
        check = (
            f"{patience} validation checks, trainlm's max_fail" if lm else f"patience {patience}"
        )
        stopping = (
            f"up to {_plural(args.epochs, unit)}, keeping the best val_loss {unit} (early "
            f"stopping: {check})"
        )
    elif validate:
        stopping = f"{most}, keeping the last (--patience 0)"
    else:
        stopping = f"{most} on every training row (--validation-fraction 0)"
    multilabel = n_out > 1 and LOSSES[loss].targets != "class" and ds.task != "regression"
    metric_note = (
        "; accuracy = exact match (every label of a row right), label_accuracy = per label"
        if multilabel and loss == "binary_cross_entropy"
        else ""
    )
    print(stopping + metric_note, flush=True)
    config = {  # what the summary reports and a resumed run must share
        "sizes": sizes,
        "activation": activation,
        "output": output,
        "loss": loss,
        "optimizer": args.optimizer,
        "lr": lr,
        "l2": l2,
        "batch_size": None if lm else batch_size,  # lm: every training row
        "grads": args.grads,
        "seed": args.seed,
        "test_size": args.test_size,
        "validation_fraction": args.validation_fraction,
    }
    t0 = time.perf_counter()
    if lm:
        trained = _train_lm(args, params, ds, Y_train, loss, l2, patience, split, solver)
    else:
        settings = {
            "data": args.data if args.data is not None else ds.name,
            "targets": list(prep.targets),
            "task": ds.task,
            **config,
            "dp_clip": args.dp_clip,
            "dp_noise": args.dp_noise,
            "data_parallel": bool(args.data_parallel),
        }
        trained = _train_fit(
            args, params, ds, Y_train, loss, lr, l2, batch_size, patience, key_fit, mesh, dp,
            run, settings,
        )  # fmt: skip
    if isinstance(trained, str):  # diverged: the message
        if run is not None and not args.resume:  # a diverged run leaves nothing to resume
            run.discard()
        print(f"mlds-jax train: error: {trained} Nothing written.", file=sys.stderr)
        return EXIT_DIVERGED
    seconds = time.perf_counter() - t0
    params = trained.params
    scores = mj.evaluate(params, ds.X_test, Y_test, loss)  # the test split, once
    summary = {
        "dataset": ds.name,
        **({"data": args.data, "targets": list(prep.targets)} if args.data is not None else {}),
        "task": ds.task,
        **({"classes": list(prep.classes)} if prep.classes is not None else {}),
        **config,
        "patience": patience,
        **rows,
        "epochs": args.epochs,
        "epochs_run": trained.n_run,
        **({"resumed_from_epoch": trained.start} if trained.start else {}),
        "data_parallel_devices": n_dev if mesh is not None else 1,
        "stop_reason": trained.stop_reason,
        **({"best_epoch": trained.best} if trained.best is not None else {}),
        **trained.extra,
        "train_seconds": round(seconds, 3),
        **{f"test_{k}": _shown(v, ds.dtype) for k, v in scores.items()},
    }
    print(
        _trained_line(
            trained.n_run, trained.start, seconds, trained.stop_reason, trained.best, scores, unit
        )
    )
    if dp is not None:
        print(_dp_report(dp, trained.fit_history, len(ds.X_train)))
    if run is not None:
        title = f"{ds.name}: MLP {'-'.join(map(str, sizes))}"
        if lm:
            title += " (Levenberg-Marquardt: one epoch = one iteration)"
        run.publish(
            {
                "model.npz": checkpoint_bytes(
                    params, metadata={**summary, "preprocessing": prep.to_metadata()}
                ),
                **_history_files(trained.history, summary),
                "curves.png": _plot_history(
                    trained.history, title, lr=lr, optimizer=args.optimizer
                ),
            }
        )
        print(f"wrote {os.path.join(args.out, 'model.npz')}, history.json, history.csv, curves.png")
    return 0


def _train_fit(
    args, params, ds, Y_train, loss, lr, l2, batch_size, patience, key, mesh, dp, run, settings
) -> _Trained | str:
    """Train by :func:`mlds_jax.fit` with the optax optimizer ``args.optimizer``; the
    divergence message instead if training diverged."""
    import warnings

    import mlds_jax as mj
    from mlds_jax.training import Checkpoint

    interactive = not args.no_progress and sys.stderr.isatty()
    log = None if (args.no_progress or interactive) else _epoch_logger(args.epochs)
    callbacks: list = []
    note = None
    if run is not None:
        checkpoint = Checkpoint(run.work, 1, args.resume, settings=settings)
        note = _ResumeNote(checkpoint)
        callbacks += [checkpoint, note]
    if args.track_sharpness:
        callbacks.append(mj.SharpnessTracker(args.track_sharpness))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", mj.TrainingDivergedWarning)
        params, history = mj.fit(
            params,
            ds.X_train,
            Y_train,
            loss=loss,
            optimizer=_optimizer(args.optimizer, lr),
            epochs=args.epochs,
            batch_size=batch_size,
            key=key,
            validation_split=args.validation_fraction if args.validation_fraction > 0 else None,
            grads=args.grads,
            early_stopping=mj.EarlyStopping(patience=patience) if patience else None,
            l2=l2,
            progress=interactive,
            on_epoch_end=log,
            mesh=mesh,
            dp=dp,
            callbacks=callbacks,
        )
    for w in caught:
        if not issubclass(w.category, mj.TrainingDivergedWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if history.stop_reason == "diverged":
        return next(
            str(w.message) for w in caught if issubclass(w.category, mj.TrainingDivergedWarning)
        )
    extra = {
        **({"dp_clip": args.dp_clip, "dp_noise": args.dp_noise} if dp is not None else {}),
        **({"epsilon": history["epsilon"][-1]} if history.get("epsilon") else {}),
        **(
            {"final_sharpness": _shown(history["sharpness"][-1], ds.dtype)}
            if history.get("sharpness")
            else {}
        ),
    }
    return _Trained(
        params=params,
        history=_cli_history(history, ds.dtype),
        n_run=len(history.get("loss", [])),
        start=0 if note is None else note.start,
        stop_reason=history.stop_reason,
        best=history.best_epoch + 1 if history.best_epoch is not None and patience else None,
        extra=extra,
        fit_history=history,
    )


def _train_lm(args, params, ds, Y_train, loss, l2, patience, split, solver) -> _Trained | str:
    """Train by :func:`mlds_jax.levenberg_marquardt` on the training rows that ``fit`` would
    train on (``split``: its (train, val) indices, or None); the divergence message instead if
    the loss or parameters became non-finite.

    The objective is full-batch training's: the mean loss plus (l2/N)/2 times the squared
    weights (M5), ``l2`` scikit-learn's alpha and N the training rows (as ``solver="lm"`` of
    the estimators).  With ``patience``, the val rows are trainlm's validation checks
    (``max_fail``) and the best val_loss iteration is kept; without, the last one is (and
    the val rows are not used)."""
    import jax
    import numpy as np

    import mlds_jax as mj

    X, Y = ds.X_train, Y_train
    val = None
    if split is not None:
        train_idx, val_idx = split
        X, Y, val = X[train_idx], Y[train_idx], (X[val_idx], Y[val_idx])
    params, result = mj.levenberg_marquardt(
        params,
        X,
        Y,
        loss,
        max_iter=args.epochs,
        damping=LM_DAMPING,
        validation_data=val if patience else None,
        max_fail=patience or LM_MAX_FAIL,
        l2=l2 / len(X),
        solver=solver,
    )
    leaves = jax.tree_util.tree_leaves(params)
    if not (np.isfinite(result.loss_history).all() and all(np.isfinite(x).all() for x in leaves)):
        return (
            f"training diverged: Levenberg-Marquardt reached a non-finite loss or parameters "
            f"after {_plural(result.iterations, 'iteration')}: check the data for huge values, "
            f"or add --l2."
        )

    def shown(values) -> list:
        return [_shown(float(v), ds.dtype) for v in values]

    history = {"train_loss": shown(result.loss_history[1:])}
    if result.val_loss_history is not None:
        history["val_loss"] = shown(result.val_loss_history[1:])
    history["damping"] = shown(result.damping_history)  # the mu of each accepted step
    if not args.no_progress:  # the iteration log, after the compiled run
        log = _epoch_logger(args.epochs, unit="iteration")
        n = result.iterations
        for i in range(n):
            metrics = {k.removeprefix("train_"): v[i] for k, v in history.items() if "loss" in k}
            log(i, metrics, last=i == n - 1)
    extra = {
        "iterations": result.iterations,
        "solves": result.solves,
        "solver": solver,
        "final_damping": _shown(result.damping, ds.dtype),
        "grad_norm": _shown(result.grad_norm, ds.dtype),
    }
    return _Trained(
        params=params,
        history=history,
        n_run=result.iterations,
        start=0,
        stop_reason=LM_STOP_REASONS.get(result.stop_reason, result.stop_reason),
        best=result.best_iteration if patience else None,
        extra=extra,
        fit_history=None,
    )


#: How the summary line names each metric.
_METRIC_NOTES = {"accuracy": "accuracy", "label_accuracy": "label_accuracy (per label)"}
#: How the summary line explains a stop reason of Levenberg–Marquardt's own.
_STOP_NOTES = {
    "min_grad": "min grad: the gradient norm fell to 1e-7",
    "max_damping": "max damping: no damped step lowers the loss",
}


def _trained_line(
    n: int, start: int, seconds: float, reason: str, best, scores: dict, unit: str = "epoch"
) -> str:
    """ "trained 56 epochs in 1.4 s (early stopping: kept epoch 36, the best val_loss); test
    accuracy 0.9750" (singular for one epoch; resumed runs say how many came before; lm
    counts iterations)."""
    done = f"trained {_plural(n - start, unit)}"
    if start:
        done = f"trained {_plural(n - start, 'more ' + unit)} ({n} in all, resumed at {start})"
    why = _STOP_NOTES.get(reason, reason.replace("_", " "))
    if best is not None:
        why += f": kept {unit} {best}, the best val_loss"
    exact = "label_accuracy" in scores
    shown = "  ".join(
        f"test {k}{' (exact match)' if exact and k == 'accuracy' else ''} {v:.4f}"
        for k, v in scores.items()
    )
    return f"{done} in {seconds:.1f} s ({why}); {shown}"


def cmd_gradcheck(args) -> int:
    import jax
    import numpy as np

    import mlds_jax as mj
    from mlds_jax.losses import default_loss_for

    loss = args.loss or default_loss_for(args.output)
    if len(args.sizes) < 2:
        raise UsageError("--sizes needs at least two sizes (input and output)")
    params = mj.init_mlp(
        jax.random.key(args.seed), args.sizes, hidden=args.activation, output=args.output
    )
    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(args.batch, args.sizes[0]))
    k = args.sizes[-1]
    if loss == "cross_entropy":
        Y = rng.integers(0, k, size=args.batch)
    elif loss == "binary_cross_entropy":
        Y = rng.uniform(size=(args.batch, k))
    else:
        Y = rng.normal(size=(args.batch, k))
    report = mj.check_grads(params, X, Y, loss, fused=not args.general, seed=args.seed)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.ok else 1


def _model_and_preprocessing(path: str):
    """(params, metadata, Preprocessing) of a model written by ``train --out``."""
    import mlds_jax as mj
    from mlds_jax.tabular import Preprocessing

    params, meta = mj.load(path, return_metadata=True)
    try:
        prep = Preprocessing.from_metadata((meta or {}).get("preprocessing"))
    except ValueError as exc:
        raise UsageError(
            f"{path}: {exc}: a model written by 'mlds-jax train --out' records how to "
            f"prepare raw rows (models saved by mj.save do not)"
        ) from None
    return params, meta or {}, prep


def _table_inputs(prep, table, params):
    """The table's features, preprocessed as in training, in the parameters' dtype."""
    import numpy as np

    return prep.transform(prep.raw_features(table), np.dtype(params[0].W.dtype))


def cmd_predict(args) -> int:
    import io

    import mlds_jax as mj
    from mlds_jax.io.atomic import atomic_write
    from mlds_jax.io.table import read_table

    params, _, prep = _model_and_preprocessing(args.checkpoint)
    table = read_table(args.data)
    outputs = mj.forward(params, _table_inputs(prep, table, params))
    columns = prep.decode(outputs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(prep.targets)
    for row in zip(*columns, strict=True):
        writer.writerow([repr(float(v)) if prep.task == "regression" else v for v in row])
    text = buf.getvalue()
    if args.out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write(args.out, text.encode(), what="predictions")
        print(f"wrote {args.out} ({_plural(table.n_rows, 'row')}: {', '.join(prep.targets)})")
    return 0


def cmd_evaluate(args) -> int:
    if args.data is not None:
        if args.dataset is not None or args.seed is not None or args.test_size is not None:
            raise UsageError(
                "--data scores every row of the table: no --dataset/--seed/--test-size"
            )
        return _evaluate_table(args)
    import mlds_jax as mj
    from mlds_jax.datasets import load_dataset

    params, meta = mj.load(args.checkpoint, return_metadata=True)
    meta = meta or {}
    if meta.get("data") is not None and args.dataset is None:
        raise UsageError(
            f"the checkpoint was trained on {meta['data']}: score it on a table with --data PATH"
        )
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise UsageError("the checkpoint records no data set: pass --dataset or --data")
    seed = args.seed if args.seed is not None else meta.get("seed", 0)
    test_size = args.test_size if args.test_size is not None else meta.get("test_size", 0.2)
    ds = load_dataset(name, test_size=test_size, seed=seed)
    loss = args.loss or meta.get("loss") or ds.default_loss
    trained_on = (meta.get("dataset"), meta.get("seed"), meta.get("test_size"))
    if trained_on[0] == name and None not in trained_on[1:] and trained_on[1:] != (seed, test_size):
        print(
            f"mlds-jax evaluate: warning: the checkpoint was trained on the {name} split with "
            f"seed {trained_on[1]}, test size {trained_on[2]}; this split (seed {seed}, test "
            f"size {test_size}) holds rows it was trained on, so the score is optimistic",
            file=sys.stderr,
        )
    _, Y_test, _ = _targets(ds, loss)
    scores = mj.evaluate(params, ds.X_test, Y_test, loss)
    sizes = "-".join(map(str, mj.layer_sizes(params)))
    print(
        f"{args.checkpoint}: MLP {sizes} on {name} test split ({len(ds.X_test)} rows): "
        + _scores_text(scores)
    )
    return 0


def _scores_text(scores: dict) -> str:
    exact = "label_accuracy" in scores
    return "  ".join(
        f"{k}{' (exact match)' if exact and k == 'accuracy' else ''} {v:.4f}"
        for k, v in scores.items()
    )


def _evaluate_table(args) -> int:
    import numpy as np

    import mlds_jax as mj
    from mlds_jax.io.table import read_table

    params, meta, prep = _model_and_preprocessing(args.checkpoint)
    table = read_table(args.data)
    X = _table_inputs(prep, table, params)
    dtype = np.dtype(params[0].W.dtype)
    loss = args.loss or meta.get("loss") or mj.training.default_loss(params)
    y = prep.network_targets(prep.encode_targets(table), dtype)
    labels = y.reshape(-1).astype(np.int32) if prep.task == "binary" else y
    n_classes = None if prep.classes is None else len(prep.classes)
    Y = _loss_targets(prep.task, labels, n_classes, loss, dtype, table.path)
    scores = mj.evaluate(params, X, Y, loss)
    sizes = "-".join(map(str, mj.layer_sizes(params)))
    units = " (loss on standardised targets)" if prep.task == "regression" else ""
    print(
        f"{args.checkpoint}: MLP {sizes} on {table.path} ({_plural(table.n_rows, 'row')})"
        f"{units}: " + _scores_text(scores)
    )
    return 0


def _resumable(args) -> str:
    """ "; saved ...": where an interrupted ``train --out`` saved its last epoch, else ""."""
    out = getattr(args, "out", None)
    if args.command != "train" or not out:
        return ""
    from mlds_jax.io.run_directory import work_path
    from mlds_jax.io.train_state import state_path

    state = state_path(work_path(out))
    if not os.path.isfile(state):
        return ""
    return f"; the last completed epoch is saved in {state}: rerun with --resume"


COMMANDS = {
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "gradcheck": cmd_gradcheck,
}


def _quiet_stdout() -> None:
    """After the reader of stdout went away (``| head``): send what is left to /dev/null,
    so that the interpreter's final flush does not fail a second time."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mlds-jax`` console script; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `mlds-jax ... | head`: the reader has all it wanted
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _enable_cache(args)
    import signal

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no handler
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        note = _resumable(args)
        if note:  # stderr may still reach a person: where the run's state is
            with contextlib.suppress(OSError):
                print(f"mlds-jax {args.command}: stdout closed{note}", file=sys.stderr)
        raise
    except (UsageError, ValueError, TypeError, ImportError) as exc:
        # bad values found by the library's own checks, or a missing extra (matplotlib,
        # scikit-learn: the message says which to install): one line, no traceback
        print(f"mlds-jax {args.command}: error: {exc}", file=sys.stderr)
    except OSError as exc:  # a full disk, say: what was saved can be resumed
        print(f"mlds-jax {args.command}: error: {exc}{_resumable(args)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"mlds-jax {args.command}: interrupted{_resumable(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print(f"mlds-jax {args.command}: terminated{_resumable(args)}", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as exc:
        if "RESOURCE_EXHAUSTED" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0]
        print(f"mlds-jax {args.command}: error: out of memory: {first}", file=sys.stderr)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
