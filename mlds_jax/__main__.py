"""``python -m mlds_jax``: the ``mlds-jax`` command (see ``mlds_jax.cli``)."""

import sys

from mlds_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
