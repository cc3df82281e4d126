r"""Loading a large checkpoint: time and peak memory of ``mj.load`` against other readers.

One float32 network 16384-16384-10 (about 1 GiB of parameters, one 1 GiB weight: the worst
case for a reader that copies a leaf) is saved in /tmp as ``.npz`` (``mj.save``) and as
``.safetensors``; each measurement runs in a fresh process, which imports JAX, puts one array
on the device (the process baseline), resets the kernel's peak-RSS counter (``VmHWM``, via
``/proc/self/clear_refs``), loads the file, waits for the arrays, and reports

* the load time (wall clock, the file in the page cache after the first round);
* the peak RSS above the baseline, in MiB and as a multiple of the parameters' bytes (1.0
  means the reader held nothing but what it returned).

Readers, interleaved round by round (medians over ``--rounds``):

* ``mj.load npz``: ``mj.load(path)``: signature, header, arrays read into aligned buffers
  that ``jax.device_put`` adopts;
* ``np.load npz``: ``np.load(path)`` and every array materialised (NumPy's reader: no
  checks, NumPy arrays);
* ``mj.load safetensors``: ``mj.load(path)`` of the ``.safetensors`` file (weights
  transposed in 16 MiB blocks);
* ``safetensors.numpy``: the reference reader's ``load_file`` (NumPy arrays in PyTorch's
  layout, no transpose); skipped if the ``safetensors`` package is missing.

``--baseline DIR`` adds the ``mj.load`` rows of another mlds_jax source tree (its package
imported from DIR), e.g. the last commit before the io package::

    git -C . archive f10b504 | tar -x -C /tmp/mlds-f10b504
    .venv/bin/python benchmarks/io_load.py --baseline /tmp/mlds-f10b504

    .venv/bin/python benchmarks/io_load.py                 # 1 GiB, 3 rounds
    .venv/bin/python benchmarks/io_load.py --mib 64 --rounds 1

The files are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

READERS = ("mj.load npz", "np.load npz", "mj.load safetensors", "safetensors.numpy")


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _read(reader: str, path: str) -> list:
    import numpy as np

    import mlds_jax as mj

    if reader.startswith("mj.load"):
        return [leaf for layer in mj.load(path) for leaf in (layer.W, layer.b)]
    if reader == "np.load npz":
        with np.load(path, allow_pickle=False) as npz:
            return [npz[name] for name in npz.files]
    import safetensors.numpy

    return list(safetensors.numpy.load_file(path).values())


def worker(reader: str, path: str) -> dict:
    """One measurement, in this (fresh) process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jnp.zeros(8).block_until_ready()
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False  # the peak then includes the import's: an upper bound
    t0 = time.perf_counter()
    arrays = _read(reader, path)
    jax.block_until_ready([a for a in arrays if isinstance(a, jax.Array)])
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    nbytes = sum(int(np.asarray(a).nbytes) for a in arrays)
    return {"seconds": seconds, "peak_above_base": peak - base, "bytes": nbytes, "reset": reset}


def _label(reader: str, tree: str | None) -> str:
    return reader if tree is None else f"{reader} ({os.path.basename(tree.rstrip('/'))})"


def _width(mib: int) -> int:
    return max(16, int((mib * 2**20 / 4) ** 0.5))


def _make_files(directory: str, mib: int) -> dict[str, str]:
    """The network, saved both ways (in a child process: this one stays small)."""
    width = _width(mib)
    code = f"""
import numpy as np, mlds_jax as mj
rng = np.random.default_rng(0)
W0 = rng.standard_normal(({width}, {width}), dtype=np.float32)
params = (mj.Dense(W0, np.zeros({width}, np.float32), "relu"),
          mj.Dense(rng.standard_normal(({width}, 10), dtype=np.float32),
                   np.zeros(10, np.float32), "softmax"))
mj.save({directory!r} + "/model.npz", params)
mj.save({directory!r} + "/model.safetensors", params)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return {"npz": f"{directory}/model.npz", "safetensors": f"{directory}/model.safetensors"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="parameter MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--baseline", metavar="DIR", help="also time mj.load of this source tree")
    parser.add_argument("--worker", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return {}
    readers = [r for r in args.readers.split(",") if r]
    if "safetensors.numpy" in readers:
        try:
            import safetensors.numpy  # noqa: F401
        except ImportError:
            readers.remove("safetensors.numpy")
    runs = [(r, None) for r in readers]
    if args.baseline:
        runs += [(r, args.baseline) for r in readers if r.startswith("mj.load")]
    results: dict[str, list[dict]] = {_label(r, tree): [] for r, tree in runs}
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    with tempfile.TemporaryDirectory(prefix="mlds-io-load-", dir="/tmp") as tmp:
        paths = _make_files(tmp, args.mib)
        sizes = {k: os.path.getsize(p) for k, p in paths.items()}
        for _ in range(args.rounds):
            for reader, tree in runs:
                path = paths["safetensors" if "safetensors" in reader else "npz"]
                run_env = env if tree is None else {**env, "PYTHONPATH": tree}
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", reader, path],
                    capture_output=True, text=True, env=run_env, check=True,
                )  # fmt: skip
                results[_label(reader, tree)].append(
                    json.loads(out.stdout.strip().splitlines()[-1])
                )
    mib = 2**20
    w = _width(args.mib)
    print(f"\nLoading a {sizes['npz'] / mib:.0f} MiB checkpoint ({w}-{w}-10 float32), "
          f"{args.rounds} round(s), one process per measurement; load average "
          f"{os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| reader | load time (s) | peak RSS above baseline (MiB) | peak / params |")
    print("|---|---:|---:|---:|")
    table = {}
    for reader, rows in results.items():
        t = statistics.median(r["seconds"] for r in rows)
        peak = statistics.median(r["peak_above_base"] for r in rows)
        ratio = peak / rows[0]["bytes"]
        table[reader] = {"seconds": t, "peak_mib": peak / mib, "peak_ratio": ratio}
        print(f"| {reader} | {t:.3f} | {peak / mib:.0f} | {ratio:.2f} |")
    if not all(r["reset"] for rows in results.values() for r in rows):
        print("\n(VmHWM could not be reset: the peaks include the imports')")
    return table


if __name__ == "__main__":
    main()
