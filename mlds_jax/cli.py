"""The ``mlds-jax`` command: a thin layer over the public API.

  mlds-jax train        train an MLP on a bundled data set (default: digits, manual gradients)
  mlds-jax gradcheck    manual vs jax.grad vs finite differences, per leaf
  mlds-jax evaluate     score a saved checkpoint on a data set's test split

Errors in options or values exit with status 2 and one line, never a traceback.

Compiled programs are kept in JAX's persistent compilation cache, so a second run skips most
of the compiling: ``$MLDS_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlds-jax/jax``, else
``~/.cache/mlds-jax/jax`` (see :mod:`mlds_jax.compilation`).  ``--no-compilation-cache`` turns
it off; delete the directory to clear it.  An unusable directory only warns.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence

EXIT_USAGE = 2
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3}


class UsageError(Exception):
    """A bad option or value: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 128,64, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return values


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not 0 < value < float("inf"):  # nan and inf too: --lr inf diverges at once
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if not 0 <= value < 2**32:  # numpy's and the data splits' seed range
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32), got {text!r}")
    return value


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
        help="hidden layer widths (default: 128,64)",
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
    t.add_argument("--test-size", type=float, default=0.2, help="test fraction (default: 0.2)")
    t.add_argument(
        "--early-stopping",
        type=_positive(int),
        default=None,
        metavar="PATIENCE",
        help="stop when the test-split loss stalls for PATIENCE epochs",
    )
    t.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write model.npz, history.json, history.csv and curves.png here",
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
    e.add_argument("--test-size", type=float, default=None)
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
    if getattr(args, "no_compilation_cache", True):
        return
    from mlds_jax.compilation import enable_compilation_cache

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


def _prepare_out(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out directory {path!r}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out directory {path!r} is not writable")
    return path


def _write_history(out: str, history: dict, summary: dict) -> None:
    from mlds_jax.checkpoint import atomic_write

    payload = {"summary": summary, "history": {k: list(v) for k, v in history.items()}}
    atomic_write(os.path.join(out, "history.json"), json.dumps(payload, indent=2).encode())
    rows = _history_rows(history)
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write(os.path.join(out, "history.csv"), buf.getvalue().encode())


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
    n = len(history.get("loss", []))
    keys = [k for k in history if k != "sharpness_epoch"]
    at = dict(zip(history.get("sharpness_epoch", []), history.get("sharpness", []), strict=True))
    rows = [["epoch", *keys]]
    for i in range(n):
        rows.append(
            [i + 1, *(at.get(i + 1, "") if k == "sharpness" else history[k][i] for k in keys)]
        )
    return rows


def _plot_history(
    out: str, history: dict, title: str, *, lr: float | None = None, optimizer: str = "sgd"
) -> str:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ImportError(
            "writing curves.png needs matplotlib: pip install 'mlds-jax[plot]'"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlds_jax.checkpoint import atomic_write

    metrics = [m for m in ("accuracy", "r2") if m in history]
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
        ax.legend()
    epochs = range(1, len(history.get("loss", [])) + 1)  # empty if epoch 1 diverged
    axes[0].plot(epochs, history.get("loss", []), label="train")
    if "val_loss" in history:
        axes[0].plot(epochs, history["val_loss"], label="test")
    axes[0].set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    axes[0].legend()
    for ax, m in zip(axes[1:], metrics, strict=True):
        ax.plot(epochs, history[m], label="train")
        if "val_" + m in history:
            ax.plot(epochs, history["val_" + m], label="test")
        ax.set(xlabel="epoch", ylabel=m, title=m)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = os.path.join(out, "curves.png")
    atomic_write(path, buf.getvalue())
    return path


def _epoch_logger(epochs: int):
    every = max(1, epochs // 10)

    def log(e: int, metrics: dict) -> None:
        if (e + 1) % every == 0 or e == 0 or e + 1 == epochs:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "time")
            print(f"epoch {e + 1:>4}/{epochs}  {shown}", flush=True)

    return log


def cmd_train(args) -> int:
    import jax

    import mlds_jax as mj
    from mlds_jax.checkpoint import save
    from mlds_jax.datasets import load_dataset
    from mlds_jax.losses import LOSSES

    if not 0 < args.test_size < 1:
        raise UsageError(f"--test-size must be in (0, 1), got {args.test_size}")
    if (args.dp_clip is None) != (args.dp_noise is None):
        raise UsageError("--dp-clip C and --dp-noise SIGMA go together: give both or neither")
    dp = None if args.dp_clip is None else mj.DPSGD(args.dp_clip, args.dp_noise)
    if dp is not None and args.data_parallel:
        raise UsageError("--dp-clip/--dp-noise cannot be combined with --data-parallel")
    out = _prepare_out(args.out) if args.out else None
    ds = load_dataset(args.dataset, test_size=args.test_size, seed=args.seed)
    loss = args.loss or ds.default_loss
    allowed = LOSSES[loss].outputs  # the registry says which outputs a loss needs
    output = allowed[0] if allowed else ds.default_output
    sizes = [ds.n_features, *args.hidden_sizes, ds.n_outputs]
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params = mj.init_mlp(key_init, sizes, hidden=args.activation, output=output)
    Y_train, Y_test = ds.targets("train"), ds.targets("test")
    device = jax.devices()[0]
    mesh = mj.data_parallel_mesh(jax.local_devices()) if args.data_parallel else None
    where = (
        f"{len(jax.local_devices())} {device.platform.upper()} devices (data parallel)"
        if mesh is not None
        else f"{device.platform.upper()} ({device.device_kind})"
    )
    print(
        f"mlds-jax train: {ds.name} ({ds.task}, {len(ds.X_train)} train / {len(ds.X_test)} "
        f"test rows), MLP {'-'.join(map(str, sizes))} {args.activation}/{output}, loss {loss}, "
        f"{args.optimizer}(lr={lr:g}), batch {args.batch_size}, {args.grads} gradients, "
        f"on {where}",
        flush=True,
    )
    interactive = not args.no_progress and sys.stderr.isatty()
    log = None if (args.no_progress or interactive) else _epoch_logger(args.epochs)
    t0 = time.perf_counter()
    params, history = mj.fit(
        params,
        ds.X_train,
        Y_train,
        loss=loss,
        optimizer=_optimizer(args.optimizer, lr),
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=key_fit,
        validation_data=(ds.X_test, Y_test),
        grads=args.grads,
        early_stopping=args.early_stopping,
        progress=interactive,
        on_epoch_end=log,
        mesh=mesh,
        dp=dp,
        track_sharpness=args.track_sharpness,
    )
    seconds = time.perf_counter() - t0
    scores = mj.evaluate(params, ds.X_test, Y_test, loss)
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
        "epochs_run": n_epochs,
        "data_parallel_devices": len(jax.local_devices()) if mesh is not None else 1,
        "stop_reason": history.stop_reason,
        **({"dp_clip": args.dp_clip, "dp_noise": args.dp_noise} if dp is not None else {}),
        **({"epsilon": history["epsilon"][-1]} if history.get("epsilon") else {}),
        **({"final_sharpness": history["sharpness"][-1]} if history.get("sharpness") else {}),
        "train_seconds": round(seconds, 3),
        **{f"test_{k}": v for k, v in scores.items()},
    }
    shown = "  ".join(f"test {k} {v:.4f}" for k, v in scores.items())
    print(f"trained {n_epochs} epochs in {seconds:.1f} s ({history.stop_reason}); {shown}")
    if dp is not None:
        print(_dp_report(dp, history, len(ds.X_train)))
    if out:
        save(os.path.join(out, "model.npz"), params, metadata=summary)
        _write_history(out, history, summary)
        png = _plot_history(
            out,
            history,
            f"{ds.name}: MLP {'-'.join(map(str, sizes))}",
            lr=lr,
            optimizer=args.optimizer,
        )
        print(f"wrote {os.path.join(out, 'model.npz')}, history.json, history.csv, {png}")
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
    from mlds_jax.checkpoint import load
    from mlds_jax.datasets import load_dataset

    params, meta = load(args.checkpoint, return_metadata=True)
    meta = meta or {}
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise UsageError("the checkpoint records no data set: pass --dataset")
    seed = args.seed if args.seed is not None else meta.get("seed", 0)
    test_size = args.test_size if args.test_size is not None else meta.get("test_size", 0.2)
    ds = load_dataset(name, test_size=test_size, seed=seed)
    loss = args.loss or meta.get("loss") or ds.default_loss
    scores = mj.evaluate(params, ds.X_test, ds.targets("test"), loss)
    sizes = "-".join(map(str, mj.layer_sizes(params)))
    print(
        f"{args.checkpoint}: MLP {sizes} on {name} test split ({len(ds.X_test)} rows): "
        + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )
    return 0


COMMANDS = {"train": cmd_train, "gradcheck": cmd_gradcheck, "evaluate": cmd_evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mlds-jax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _enable_cache(args)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError, OSError) as exc:
        # bad values found by the library's own checks: one line, no traceback
        print(f"mlds-jax {args.command}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"mlds-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
