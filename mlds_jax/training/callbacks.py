"""The training callbacks ``fit`` builds from its keywords: progress, the verbose log, the
per-epoch function, resumable checkpoints.  Each is a :class:`mlds_jax.callback.Callback`;
the protocol is documented there.  (DP-SGD's privacy accounting and sharpness tracking are
callbacks too; they live with their extensions.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable

from mlds_jax.callback import Callback
from mlds_jax.io import train_state
from mlds_jax.training.run import History, Run

__all__ = [
    "Checkpoint",
    "EpochEndFunction",
    "ProgressBar",
    "VerboseLog",
    "check_verbose",
    "in_jupyter_kernel",
    "progress_mode",
]


def in_jupyter_kernel() -> bool:
    """True when running inside an IPython kernel (Jupyter, VS Code notebooks, Colab).

    IPython must already be imported (it is, in a kernel) and ``get_ipython()`` must return
    a shell with a ``kernel``; a plain IPython terminal has none.  Never imports IPython.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:
        return False
    return getattr(shell, "kernel", None) is not None


def progress_mode(progress: bool) -> str | None:
    """How ``fit`` shows progress: "notebook" (tqdm's widget bar in a kernel, when tqdm and
    ipywidgets are installed), "line" (a kernel without them: one line on stdout, rewritten
    in place), "bar" (tqdm on a terminal stderr) or None (off, not a terminal, or no tqdm)."""
    if not progress:
        return None
    has_tqdm = importlib.util.find_spec("tqdm") is not None
    if in_jupyter_kernel():
        return "notebook" if has_tqdm and importlib.util.find_spec("ipywidgets") else "line"
    if hasattr(sys.stderr, "isatty") and sys.stderr.isatty() and has_tqdm:
        return "bar"
    return None


def check_verbose(verbose) -> int:
    if isinstance(verbose, bool) or not isinstance(verbose, int):
        raise TypeError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose}")
    return int(verbose)


def _shown(logs: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "time")


class _Paced(Callback):
    """A display: chunks are cut so that it updates about every ``interval`` seconds (the
    first chunk is one epoch, to measure; results do not depend on the chunking)."""

    interval = 0.25

    def __init__(self):
        self._per_epoch: float | None = None
        self._seen: int = 0

    def epochs_until_due(self, epoch: int) -> int | None:
        if self._per_epoch is None or self._seen < 2:  # the first chunk pays the compile
            return 1
        return max(1, int(self.interval / max(self._per_epoch, 1e-9)))

    def on_epoch_end(self, epoch: int, logs: dict, run: Run) -> bool | None:
        self._per_epoch, self._seen = logs.get("time", 0.0), self._seen + 1
        self.show(epoch, logs, run)
        return None

    def show(self, epoch: int, logs: dict, run: Run) -> None:
        """Display one finished epoch (subclasses)."""


def _kernel_display():
    """IPython's ``(display, Pretty)`` from the running kernel's IPython (already imported
    there), or None outside a kernel or without them."""
    shown = getattr(sys.modules.get("IPython"), "display", None)
    display, pretty = getattr(shown, "display", None), getattr(shown, "Pretty", None)
    if display is None or pretty is None or not in_jupyter_kernel():
        return None
    return display, pretty


class _KernelLine:
    """One line of text shown in a kernel as a display updated in place (``display_id``)."""

    def __init__(self, line: str):
        parts = _kernel_display()
        if parts is None:
            raise LookupError("not in a kernel with IPython's display")
        display, self._pretty = parts
        self._handle = display(self._pretty(line), display_id=True)
        if self._handle is None:
            raise LookupError("display_id not supported")

    def update(self, line: str) -> None:
        self._handle.update(self._pretty(line))


def _updatable_display(line: str) -> _KernelLine | None:
    """``line`` displayed in a kernel, updatable; None where that is not possible."""
    try:
        return _KernelLine(line)
    except Exception:  # noqa: BLE001 (no kernel display: the caller prints "\r" lines)
        return None


class ProgressBar(_Paced):
    """A progress bar: tqdm's on a terminal, its widget in Jupyter (with ipywidgets), or one
    line rewritten in place in a kernel without them (see :func:`progress_mode`), once per
    chunk: the last epoch of each (a kernel's output then holds one message per chunk, not
    one per epoch)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self._bar = None
        self._line = ""
        self._pending: str | None = None
        self._display: _KernelLine | None = None

    def on_train_begin(self, run: Run) -> None:
        if self.mode in ("bar", "notebook"):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=run.epochs, desc="fit", unit="epoch", file=sys.stderr,
                initial=run.state.epoch,
            )  # fmt: skip

    def show(self, epoch: int, logs: dict, run: Run) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "time"})
            self._bar.update(1)
        else:
            self._pending = f"fit: epoch {epoch + 1}/{run.epochs}  {_shown(logs)}"

    def on_chunk_end(self, run: Run) -> bool | None:
        self._flush()
        return None

    def _flush(self) -> None:
        """Show the pending line: in a kernel one display updated in place (IPython's
        ``display_id``: a saved notebook keeps one output, the last line), else "\r"."""
        if self._pending is None:
            return
        line, self._pending = self._pending, None
        if self._display is None and not self._line:
            self._display = _updatable_display(line)
            if self._display is not None:
                self._line = line
                return
        if self._display is not None:
            self._display.update(line)
        else:
            pad = " " * max(0, len(self._line) - len(line))
            print("\r" + line + pad, end="", flush=True)
        self._line = line

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            return
        self._flush()  # a last epoch not yet shown (a diverged chunk has no chunk end)
        if self._line and self._display is None:
            print(flush=True)

    def on_train_end(self, run: Run) -> None:
        self._close()

    def on_interrupt(self, run: Run, error: BaseException) -> None:
        self._close()


class VerboseLog(_Paced):
    """``verbose=1``: a line ``epoch e/E  loss ...  val_loss ...`` on stdout every ⌈E/10⌉-th
    epoch and for the last epoch run; ``verbose=2``: a line per epoch."""

    def __init__(self, verbose: int):
        super().__init__()
        self.verbose = verbose
        self._every = 1
        self._pending: str | None = None

    def on_train_begin(self, run: Run) -> None:
        self._every = max(1, -(-run.epochs // 10)) if self.verbose == 1 else 1

    def show(self, epoch: int, logs: dict, run: Run) -> None:
        width = len(str(run.epochs))
        self._pending = f"epoch {epoch + 1:>{width}}/{run.epochs}  {_shown(logs)}"
        if (epoch + 1) % self._every == 0 or epoch + 1 == run.epochs:
            print(self._pending, flush=True)
            self._pending = None

    def on_train_end(self, run: Run) -> None:
        if self._pending is not None:  # the last epoch run, when training stopped early
            print(self._pending, flush=True)


class EpochEndFunction(Callback):
    """``fit(on_epoch_end=fn)``: ``fn(epoch, logs)`` after every epoch (its chunk ends there),
    with a fresh dict of that epoch's history entries; ``True`` stops training."""

    def __init__(self, fn: Callable[[int, dict], bool | None]):
        if not callable(fn):
            raise TypeError(
                f"on_epoch_end must be callable(epoch, metrics), got {type(fn).__name__}"
            )
        self.fn = fn
        self._last: tuple[int, dict] | None = None

    def epochs_until_due(self, epoch: int) -> int | None:
        return 1

    def on_epoch_end(self, epoch: int, logs: dict, run: Run) -> bool | None:
        self._last = (epoch, logs)  # complete once every callback has added its entries
        return None

    def on_chunk_end(self, run: Run) -> bool | None:
        if self._last is None:
            return None
        epoch, logs = self._last
        self._last = None
        return self.fn(epoch, dict(logs)) is True


class Checkpoint(Callback):
    """Resumable training: the whole training state in ``directory/train_state.npz``.

    Written atomically (see :mod:`mlds_jax.io.train_state`) every ``every`` epochs, when training
    ends, and when it is interrupted (KeyboardInterrupt or any exception raised from a signal
    handler or a callback: the last completed epoch is saved, then the exception propagates).
    The directory is created (parents too) if it does not exist.

    With ``resume`` the run continues from the file (FileNotFoundError if there is none):

    * from its last completed epoch, bit-identical to an uninterrupted run; ``resumed_from``
      is then that epoch count, and ``verbose`` prints "resuming from epoch N of M";
    * a run that had finished (all its epochs, early stopping or a callback's stop) continues
      when more epochs are asked for than it has done (``epochs`` is the total), from its
      last epoch, with the early-stopping count where it stood (so a larger patience lets it
      run on); asking for fewer epochs than it has done is a ValueError, as many is a run
      with nothing left to train;
    * a state of another run (key, data size, batch size, loss), another optimizer or
      another architecture (named in layer sizes) is refused naming the mismatch; so are
      changed ``settings``: a JSON-ready dict of whatever else must not change across a
      resume (learning rate, regularisation...), stored with the state and compared key by
      key (a state saved without settings, by an earlier version, is not compared).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int = 1,
        resume: bool = False,
        *,
        settings: dict | None = None,
        verbose: int = 0,
    ):
        self.directory, self.every, self.resume = directory, every, resume
        self.settings = None if settings is None else dict(settings)
        self.verbose = verbose
        self.path = train_state.state_path(directory)
        #: The epochs the resumed state had done (None: not resumed yet, or a fresh run).
        self.resumed_from: int | None = None
        #: Why the resumed run had stopped ("completed" for an interrupted run).
        self.resumed_stop_reason: str | None = None
        self._saved_at = -1
        self._snapshot = None  # (state, history lengths) after the last completed chunk

    @staticmethod
    def run_id(run: Run) -> dict:
        """What must match for a state to be resumed by this run."""
        return {
            "key": list(run.data.words),
            "n": run.data.n,
            "batch_size": run.trainer.batch_size,
            "loss": run.trainer.loss,
        }

    def on_train_begin(self, run: Run) -> None:
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(
                f"checkpoint_dir {os.fspath(self.directory)!r} exists and is not a directory"
            )
        os.makedirs(self.directory, exist_ok=True)
        if self.resume:
            state = run.state
            saved, params, opt_state, best_params = train_state.load_train_state(
                self.path, state.params, state.opt_state
            )
            if saved.get("run") != self.run_id(run):
                raise ValueError(
                    f"training state {self.path} is of another run ({saved.get('run')}); this "
                    f"call has {self.run_id(run)}: resume with the same key, data, batch size "
                    "and loss"
                )
            self._check_settings(saved.get("settings"))
            done = int(saved["epoch"])
            if done > run.epochs:
                raise ValueError(
                    f"training state {self.path} has done {done} epochs; epochs={run.epochs} "
                    f"asks for fewer (epochs is the total, counting earlier ones): ask for more "
                    f"than {done} to continue it"
                )
            history = History({k: list(v) for k, v in saved["history"].items()})
            history.stop_reason = self.resumed_stop_reason = saved["stop_reason"]
            if done < run.epochs and history.stop_reason in ("early_stopping", "callback"):
                history.stop_reason = "completed"  # a finished run asked for more epochs
            history.best_epoch = saved["best_epoch"]
            run.history = history
            run.state = state._replace(
                params=params,
                opt_state=opt_state,
                epoch=int(saved["epoch"]),
                best_value=float(saved["best_value"]),
                since_best=int(saved["since_best"]),
                best_epoch=saved["best_epoch"],
                best_params=best_params,
            )
            self._saved_at = run.state.epoch
            self.resumed_from = done
            if self.verbose:
                print(f"resuming from epoch {done} of {run.epochs} ({self.path})", flush=True)
        self._snapshot = (run.state, run.history.lengths())

    def _check_settings(self, saved) -> None:
        """A ValueError naming every setting that differs from the saved run's."""
        if self.settings is None or not isinstance(saved, dict):
            return  # nothing to compare with: a state written without settings
        ours = json.loads(json.dumps(self.settings, default=str))  # as it would be stored
        changed = [k for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)]
        if changed:
            diffs = "; ".join(f"{k}: saved {saved.get(k)!r}, now {ours.get(k)!r}" for k in changed)
            raise ValueError(
                f"training state {self.path} was saved with other settings ({diffs}): resume "
                f"with the settings it was started with"
            )

    def epochs_until_due(self, epoch: int) -> int | None:
        return self.every - epoch % self.every

    def on_chunk_end(self, run: Run) -> bool | None:
        self._snapshot = (run.state, run.history.lengths())
        if run.state.epoch % self.every == 0:
            self._save(run, run.history.stop_reason)
        return None

    def on_train_end(self, run: Run) -> None:
        self._snapshot = (run.state, run.history.lengths())
        if self._saved_at != run.state.epoch:
            self._save(run, run.history.stop_reason)

    def on_interrupt(self, run: Run, error: BaseException) -> None:
        if self._snapshot is not None and self._saved_at != self._snapshot[0].epoch:
            self._save(run, "completed")  # the last completed epoch, resumable

    def _save(self, run: Run, stop_reason: str) -> None:
        assert self._snapshot is not None
        state, lengths = self._snapshot
        record = {
            "run": self.run_id(run),
            "epoch": state.epoch,
            "history": {k: list(run.history[k][:m]) for k, m in lengths.items()},
            "stop_reason": stop_reason,
            "best_epoch": state.best_epoch,
            "best_value": state.best_value,
            "since_best": state.since_best,
            **({} if self.settings is None else {"settings": self.settings}),
        }
        train_state.save_train_state(
            self.path, state.params, state.opt_state, state.best_params, record
        )
        self._saved_at = state.epoch
