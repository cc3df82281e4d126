"""Data-parallel training over every device of every process (multi-host) with ``mlds_jax``.

Every process runs this same script.  With the distributed environment below set, it first
calls ``jax.distributed.initialize(...)`` so that the processes find each other; then
``jax.devices()`` lists the devices of *all* processes, ``jax.make_mesh((jax.device_count(),),
("batch",))`` is a mesh over all of them, and ``mj.fit(..., mesh=mesh)`` splits every minibatch
along its rows over that mesh (parameters and optimizer state replicated; XLA all-reduces the
gradients, across processes too).  Every process loads the same bundled data set with the same
seed, so they all hold identical copies of the (small) data.  Only process 0 prints and writes
files.  Without the environment it simply runs as one process over its local devices.

Environment (set all three, or none):

  MLDS_COORDINATOR    host:port of the coordinator service, which process 0 starts; every
                      process must be able to reach it (e.g. 10.0.0.1:12355).
  MLDS_NUM_PROCESSES  total number of processes N.
  MLDS_PROCESS_ID     this process's rank, 0 .. N-1 (process 0 hosts the coordinator).

JAX's names ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are read
as well (the MLDS_ ones win).  On a cluster that JAX recognises (SLURM, Open MPI, Kubernetes,
Cloud TPU) ``--auto-cluster`` calls ``jax.distributed.initialize()`` with no arguments and lets
JAX detect all three.  On CPU, ``JAX_NUM_CPU_DEVICES=k`` gives every process k devices (for a
demo on one machine: see ``examples/launch_multihost.sh``).

Usage::

    python examples/distributed_train.py --epochs 20                     # one process
    JAX_NUM_CPU_DEVICES=4 python examples/distributed_train.py --epochs 5  # 4 CPU devices
    bash examples/launch_multihost.sh 2                                   # 2 processes
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import jax
import optax

import mlds_jax as mj
from mlds_jax.datasets import DATASETS, load_dataset

#: (MLDS name, JAX name) of each distributed setting, in ``jax.distributed.initialize`` order.
ENV_VARS = {
    "coordinator_address": ("MLDS_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("MLDS_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("MLDS_PROCESS_ID", "JAX_PROCESS_ID"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=sorted(DATASETS),
                   help="bundled data set (default: digits)")
    p.add_argument("--hidden-sizes", default="128,64", metavar="H1,H2",
                   help="hidden layer widths (default: 128,64)")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default: 20)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="global minibatch size, split over all devices (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="adam learning rate (default: 1e-3)")
    p.add_argument("--grads", default="manual", choices=("manual", "autodiff"))
    p.add_argument("--seed", type=int, default=0, help="seed of init, split and shuffles")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="process 0 writes DIR/model.npz here")
    p.add_argument("--auto-cluster", action="store_true",
                   help="jax.distributed.initialize() with JAX's cluster auto-detection")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log")
    args = p.parse_args(argv)
    try:
        args.hidden_sizes = [int(h) for h in args.hidden_sizes.split(",") if h.strip()]
    except ValueError:
        p.error(f"--hidden-sizes: expected integers like 128,64, got {args.hidden_sizes!r}")
    return args


def distributed_settings(environ=None) -> dict | None:
    """``jax.distributed.initialize`` keyword arguments from the environment, or None.

    Raises:
      ValueError: only some of the three settings are present, or a number is malformed.
    """
    environ = os.environ if environ is None else environ
    found = {}
    for arg, names in ENV_VARS.items():
        value = next((environ[n] for n in names if environ.get(n, "").strip()), None)
        if value is not None:
            found[arg] = value.strip()
    if not found:
        return None
    if len(found) < len(ENV_VARS):
        missing = [ENV_VARS[a][0] for a in ENV_VARS if a not in found]
        raise ValueError(f"distributed launch needs all of {[v[0] for v in ENV_VARS.values()]};"
                         f" missing {missing}")
    try:
        n, rank = int(found["num_processes"]), int(found["process_id"])
    except ValueError:
        raise ValueError(f"MLDS_NUM_PROCESSES and MLDS_PROCESS_ID must be integers, got "
                         f"{found['num_processes']!r} and {found['process_id']!r}") from None
    if n < 1 or not 0 <= rank < n:
        raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
                         f"{n} and {rank}")
    return {"coordinator_address": found["coordinator_address"], "num_processes": n,
            "process_id": rank}


def init_distributed(auto_cluster: bool = False) -> dict | None:
    """Join the other processes, if this is a distributed launch; return the settings used."""
    settings = distributed_settings()
    if jax.distributed.is_initialized():  # e.g. main() called twice in one process
        return settings
    if settings is not None:
        jax.distributed.initialize(**settings)
    elif auto_cluster:
        jax.distributed.initialize()  # SLURM / Open MPI / Kubernetes / TPU auto-detection
        settings = {"num_processes": jax.process_count(), "process_id": jax.process_index()}
    return settings


def main(argv: Sequence[str] | None = None) -> dict:
    """Train an MLP data-parallel over all global devices; return the final metrics.

    Returns:
      A dict (the same on every process): "loss", "val_loss", "val_accuracy" of the last
      epoch, "epochs", "processes", "devices" (the mesh size), "local_devices", "seconds".
    """
    args = parse_args(argv)
    init_distributed(args.auto_cluster)
    lead = jax.process_index() == 0

    def say(*parts) -> None:
        if lead:
            print(*parts, flush=True)

    # One mesh axis "batch" over every device of every process: jax.devices() is global.
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    ds = load_dataset(args.dataset, seed=args.seed)  # identical on every process
    loss = ds.default_loss
    output = ds.default_output
    sizes = [ds.n_features, *args.hidden_sizes, ds.n_outputs]
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params = mj.init_mlp(key_init, sizes, hidden="relu", output=output)
    say(f"{jax.process_count()} process(es), {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s) in the mesh ({jax.local_device_count()} local); {ds.name}: "
        f"{len(ds.X_train)} train / {len(ds.X_test)} test rows; MLP {'-'.join(map(str, sizes))}"
        f"; global batch {args.batch_size} = {args.batch_size / jax.device_count():g} rows "
        f"per device")

    def log(e: int, m: dict) -> None:
        if not args.quiet:
            say(f"epoch {e + 1:>3}/{args.epochs}  " + "  ".join(
                f"{k} {v:.4f}" for k, v in m.items() if k != "time"))

    t0 = time.perf_counter()
    params, history = mj.fit(
        params, ds.X_train, ds.targets("train"), loss=loss, optimizer=optax.adam(args.lr),
        epochs=args.epochs, batch_size=args.batch_size, key=key_fit,
        validation_data=(ds.X_test, ds.targets("test")), grads=args.grads, progress=False,
        on_epoch_end=log, mesh=mesh)
    seconds = time.perf_counter() - t0
    metrics = {k: history[k][-1] for k in ("loss", "val_loss", "val_accuracy", "val_r2")
               if k in history}
    metrics.update(epochs=len(history["loss"]), processes=jax.process_count(),
                   devices=mesh.size, local_devices=jax.local_device_count(),
                   seconds=round(seconds, 3))
    say(f"trained {metrics['epochs']} epochs in {seconds:.1f} s: " + "  ".join(
        f"{k} {metrics[k]:.4f}" for k in ("loss", "val_loss", "val_accuracy") if k in metrics))
    if args.out:
        # The parameters are replicated on every device; jax.device_get reads this process's
        # copy.  Only process 0 writes.
        host_params = jax.device_get(params)
        if lead:
            from mlds_jax.io.checkpoint import save

            os.makedirs(args.out, exist_ok=True)
            path = save(os.path.join(args.out, "model.npz"), host_params,
                        metadata={"dataset": ds.name, "sizes": sizes, "seed": args.seed,
                                  "loss": loss, **metrics})
            say(f"wrote {path}")
    return metrics


if __name__ == "__main__":
    main()
