"""The ``mlds-jax`` command: a thin layer over the public API.

  mlds-jax train        train an MLP on a bundled data set (default: digits, manual gradients)
  mlds-jax gradcheck    manual vs jax.grad vs finite differences, per leaf
  mlds-jax evaluate     score a saved checkpoint on a data set's test split

Exit status: 0 success; 1 ``gradcheck`` found a failing leaf; 2 a bad option or value, a
bad file or a model too large for memory (one line on stderr, never a traceback); 3 training
diverged (non-finite loss or parameters: one line on stderr, nothing written to ``--out``);
130 interrupted by Ctrl-C, 143 terminated by SIGTERM (with ``--out``, the last completed epoch
is saved first for ``--resume``).

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
import sys
import time
from collections.abc import Sequence

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3}


class UsageError(Exception):
    """A bad option or value: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
_non_negative_float = _checked(
    float, lambda v: 0 <= v < float("inf"), "a float", "be a finite number >= 0"
)
# numpy's and the data splits' seed range
_seed = _checked(int, lambda v: 0 <= v < 2**32, "an int", "lie in [0, 2**32)")


def build_parser() -> argparse.ArgumentParser:
    from mlds_jax.activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
    from mlds_jax.datasets import DATASETS
    from mlds_jax.losses import LOSSES

    parser = _Parser(
        prog="mlds-jax",
        description="Hand-derived backpropagation for MLPs in JAX, cross-checked by jax.grad.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train an MLP on a bundled data set (default: digits)",
        description="Train an MLP with hand-derived gradients and report its "
        "test score.  With no options: digits, 64-128-64-10 relu/softmax, adam.",
    )
    t.add_argument(
        "--dataset",
        default="digits",
        choices=sorted(DATASETS),
        help="bundled or generated data set (default: digits)",
    )
    t.add_argument(
        "--hidden-sizes",
        type=_int_list,
        default=[128, 64],
        metavar="H1,H2",
        help="hidden layer widths (default: 128,64); 'none' for no hidden layer",
    )
    t.add_argument(
        "--activation",
        default="relu",
        choices=HIDDEN_ACTIVATIONS,
        help="hidden activation (default: relu)",
    )
    t.add_argument(
        "--loss",
        default=None,
        choices=sorted(LOSSES),
        help="loss (default: the data set's: cross_entropy, binary_cross_entropy or mse)",
    )
    t.add_argument(
        "--optimizer", default="adam", choices=OPTIMIZERS, help="optax optimizer (default: adam)"
    )
    t.add_argument(
        "--lr",
        type=_positive(float),
        default=None,
        help="learning rate (default: sgd 0.1, momentum 0.05, adam 0.001)",
    )
    t.add_argument("--epochs", type=_positive(int), default=30, help="epochs (default: 30)")
    t.add_argument(
        "--batch-size", type=_positive(int), default=32, help="minibatch size (default: 32)"
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
        type=_fraction,
        default=0.1,
        metavar="F",
        help="fraction of the training rows held out (stratified) for the val metrics and "
        "early stopping; the test split is scored once, at the end (default: 0.1)",
    )
    t.add_argument(
        "--early-stopping",
        type=_positive(int),
        default=None,
        metavar="PATIENCE",
        help="stop when the val loss stalls for PATIENCE epochs (restores the best epoch)",
    )
    t.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="publish model.npz, history.json, history.csv, curves.png and train_state.npz "
        "here, as one set when the run ends (its state meanwhile: DIR.partial/)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run of --out DIR: the interrupted one in DIR.partial/ (its state "
        "is written every epoch and on Ctrl-C/SIGTERM), else the finished one in DIR; same "
        "options, --epochs is the total",
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

    e = sub.add_parser("evaluate", help="score a checkpoint on a data set's test split")
    e.add_argument("--checkpoint", required=True, metavar="PATH")
    e.add_argument(
        "--dataset",
        default=None,
        choices=sorted(DATASETS),
        help="default: the data set recorded in the checkpoint",
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
    import optax

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
    """curves.png's bytes: train and val curves per metric (CLI history names)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ImportError(
            "writing curves.png needs matplotlib: pip install 'mlds-jax[plot]'"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = [m for m in ("accuracy", "r2") if "train_" + m in history or "val_" + m in history]
    sharp = "sharpness" in history
    panels = 1 + len(metrics) + sharp
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    axes = list(axes) if panels > 1 else [axes]
    if sharp:
        ax = axes.pop()
        ax.plot(history["sharpness_epoch"], history["sharpness"], "o-", label="λ_max")
        if lr is not None:
            ax.axhline(2 / lr, color="k", linestyle="--", label="2/η")
        bound = "" if optimizer == "sgd" else f" ({optimizer}: 2/η is the plain-GD bound)"
        ax.set(xlabel="epoch", ylabel="λ_max of the Hessian", title="sharpness" + bound)
        if min(history["sharpness"]) > 0:  # λ_max and 2/η can be orders of magnitude apart
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    epochs = range(1, len(history["train_loss"]) + 1)
    for ax, m in zip(axes, ["loss", *metrics], strict=False):
        for split in ("train", "val"):
            if f"{split}_{m}" in history:
                ax.plot(epochs, history[f"{split}_{m}"], label=split)
        ax.set(xlabel="epoch", ylabel=m, title=m)
        if m == "loss" and min(history["train_loss"]) > 0:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _epoch_logger(epochs: int):
    every = max(1, epochs // 10)

    def log(e: int, metrics: dict) -> None:
        if (e + 1) % every == 0 or e == 0 or e + 1 == epochs:
            shown = "  ".join(
                f"{'' if k.startswith('val_') else 'train_'}{k} {v:.4g}"
                for k, v in metrics.items()
                if k not in _PLAIN_KEYS
            )
            print(f"epoch {e + 1:>4}/{epochs}  {shown}", flush=True)

    return log


def _targets(ds, loss: str):
    """(Y_train, Y_test, n_outputs) in the form ``loss`` needs, or UsageError up front."""
    from mlds_jax.datasets import one_hot
    from mlds_jax.losses import LOSSES

    kind = LOSSES[loss].targets
    if ds.task == "regression":
        if kind != "real":
            raise UsageError(
                f"--loss {loss} needs class labels, but {ds.name} is a regression data set: "
                f"use --loss mse or half_squared_error"
            )
        return ds.targets("train"), ds.targets("test"), ds.n_outputs
    k = ds.n_outputs if ds.task == "multiclass" else 2
    if kind == "class":  # integer labels; a binary task gets two softmax outputs
        return ds.y_train, ds.y_test, k
    if ds.task == "binary":  # (n, 1) 0/1 targets: sigmoid/BCE, or a regression loss
        return ds.targets("train"), ds.targets("test"), 1
    return (  # multiclass with BCE or a regression loss: one-hot rows
        one_hot(ds.y_train, k, dtype=ds.dtype),
        one_hot(ds.y_test, k, dtype=ds.dtype),
        k,
    )


def _check_fits_in_memory(sizes: list[int], dtype, device, optimizer: str) -> None:
    """UsageError naming the sizes when params, gradients and optimizer state cannot fit."""
    import numpy as np

    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    copies = {"sgd": 3, "momentum": 4, "adam": 5}[optimizer]  # params, grads, best, state
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


def cmd_train(args) -> int:
    import mlds_jax as mj

    if (args.dp_clip is None) != (args.dp_noise is None):
        raise UsageError("--dp-clip C and --dp-noise SIGMA go together: give both or neither")
    dp = None if args.dp_clip is None else mj.DPSGD(args.dp_clip, args.dp_noise)
    if dp is not None and args.data_parallel:
        raise UsageError("--dp-clip/--dp-noise cannot be combined with --data-parallel")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR (the run's state lives in DIR.partial/)")
    with _run_directory(args) as run:
        return _train(args, dp, run)


def _train(args, dp, run) -> int:
    """Train, report, and publish the run's files in ``run`` (if any) as one set."""
    import warnings

    import jax

    import mlds_jax as mj
    from mlds_jax.datasets import load_dataset
    from mlds_jax.io.checkpoint import checkpoint_bytes
    from mlds_jax.losses import LOSSES
    from mlds_jax.training import validation_split_indices

    ds = load_dataset(args.dataset, test_size=args.test_size, seed=args.seed)
    loss = args.loss or ds.default_loss
    Y_train, Y_test, n_out = _targets(ds, loss)
    allowed = LOSSES[loss].outputs  # the registry says which outputs a loss needs
    output = allowed[0] if allowed else ds.default_output
    sizes = [ds.n_features, *args.hidden_sizes, n_out]
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    device = jax.devices()[0]
    _check_fits_in_memory(sizes, ds.dtype, device, args.optimizer)
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params = mj.init_mlp(key_init, sizes, hidden=args.activation, output=output)
    mesh = mj.data_parallel_mesh(jax.local_devices()) if args.data_parallel else None
    n_dev = len(jax.local_devices())
    kind = "" if device.device_kind.lower() == device.platform.lower() else f" {device.device_kind}"
    where = (
        f"{n_dev} {device.platform.upper()} device{'s' if n_dev > 1 else ''} (data parallel)"
        if mesh is not None
        else f"{device.platform.upper()}{kind}"
    )
    n_val = len(
        validation_split_indices(
            key_fit, Y_train, args.validation_fraction, stratify=LOSSES[loss].is_classification
        )[1]
    )
    rows = {"n_train": len(ds.X_train) - n_val, "n_val": n_val, "n_test": len(ds.X_test)}
    acts = f"{args.activation}/{output}" if args.hidden_sizes else output
    print(
        f"mlds-jax train: {ds.name} ({ds.task}, {rows['n_train']} train / {n_val} val "
        f"/ {rows['n_test']} test rows), MLP {'-'.join(map(str, sizes))} {acts}, loss {loss}, "
        f"{args.optimizer}(lr={lr:g}), batch {args.batch_size}, {args.grads} gradients, "
        f"on {where}",
        flush=True,
    )
    interactive = not args.no_progress and sys.stderr.isatty()
    log = None if (args.no_progress or interactive) else _epoch_logger(args.epochs)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", mj.TrainingDivergedWarning)
        params, history = mj.fit(
            params,
            ds.X_train,
            Y_train,
            loss=loss,
            optimizer=_optimizer(args.optimizer, lr),
            epochs=args.epochs,
            batch_size=args.batch_size,
            key=key_fit,
            validation_split=args.validation_fraction,
            grads=args.grads,
            early_stopping=args.early_stopping,
            progress=interactive,
            on_epoch_end=log,
            mesh=mesh,
            dp=dp,
            callbacks=[mj.SharpnessTracker(args.track_sharpness)] if args.track_sharpness else [],
            checkpoint_dir=None if run is None else run.work,
            resume=args.resume,
        )
    for w in caught:
        if not issubclass(w.category, mj.TrainingDivergedWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if history.stop_reason == "diverged":
        message = next(
            str(w.message) for w in caught if issubclass(w.category, mj.TrainingDivergedWarning)
        )
        if run is not None and not args.resume:  # a diverged run leaves nothing to resume
            run.discard()
        print(f"mlds-jax train: error: {message} Nothing written.", file=sys.stderr)
        return EXIT_DIVERGED
    seconds = time.perf_counter() - t0
    scores = mj.evaluate(params, ds.X_test, Y_test, loss)  # the test split, once
    n_epochs = len(history.get("loss", []))
    summary = {
        "dataset": ds.name,
        "sizes": sizes,
        "activation": args.activation,
        "output": output,
        "loss": loss,
        "optimizer": args.optimizer,
        "lr": lr,
        "batch_size": args.batch_size,
        "grads": args.grads,
        "seed": args.seed,
        "test_size": args.test_size,
        "validation_fraction": args.validation_fraction,
        **rows,
        "epochs_run": n_epochs,
        "data_parallel_devices": n_dev if mesh is not None else 1,
        "stop_reason": history.stop_reason,
        **({"best_epoch": history.best_epoch + 1} if history.best_epoch is not None else {}),
        **({"dp_clip": args.dp_clip, "dp_noise": args.dp_noise} if dp is not None else {}),
        **({"epsilon": history["epsilon"][-1]} if history.get("epsilon") else {}),
        **(
            {"final_sharpness": _shown(history["sharpness"][-1], ds.dtype)}
            if history.get("sharpness")
            else {}
        ),
        "train_seconds": round(seconds, 3),
        **{f"test_{k}": _shown(v, ds.dtype) for k, v in scores.items()},
    }
    shown = "  ".join(f"test {k} {v:.4f}" for k, v in scores.items())
    print(f"trained {n_epochs} epochs in {seconds:.1f} s ({history.stop_reason}); {shown}")
    if dp is not None:
        print(_dp_report(dp, history, len(ds.X_train)))
    if run is not None:
        cli_history = _cli_history(history, ds.dtype)
        title = f"{ds.name}: MLP {'-'.join(map(str, sizes))}"
        run.publish(
            {
                "model.npz": checkpoint_bytes(params, metadata=summary),
                **_history_files(cli_history, summary),
                "curves.png": _plot_history(cli_history, title, lr=lr, optimizer=args.optimizer),
            }
        )
        print(f"wrote {os.path.join(args.out, 'model.npz')}, history.json, history.csv, curves.png")
    return 0


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


def cmd_evaluate(args) -> int:
    import mlds_jax as mj
    from mlds_jax.datasets import load_dataset

    params, meta = mj.load(args.checkpoint, return_metadata=True)
    meta = meta or {}
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise UsageError("the checkpoint records no data set: pass --dataset")
    seed = args.seed if args.seed is not None else meta.get("seed", 0)
    test_size = args.test_size if args.test_size is not None else meta.get("test_size", 0.2)
    ds = load_dataset(name, test_size=test_size, seed=seed)
    loss = args.loss or meta.get("loss") or ds.default_loss
    trained_on = (meta.get("dataset"), meta.get("seed"), meta.get("test_size"))
    if (
        trained_on[0] == name
        and None not in trained_on[1:]
        and trained_on[1:]
        != (
            seed,
            test_size,
        )
    ):
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
        + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
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


COMMANDS = {"train": cmd_train, "gradcheck": cmd_gradcheck, "evaluate": cmd_evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mlds-jax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _enable_cache(args)
    import signal

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no handler
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError) as exc:
        # bad values found by the library's own checks: one line, no traceback
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
