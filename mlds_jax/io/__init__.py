"""Files you can trust: every byte mlds_jax reads or writes goes through this package.

One concept per module, imports flowing down this list:

* :mod:`~mlds_jax.io.files`: opening regular files only; reads bounded by the file, straight
  into aligned buffers.
* :mod:`~mlds_jax.io.atomic`: all-or-nothing writes of one file or of a directory as one set.
* :mod:`~mlds_jax.io.container`: the one signed container (zip of ``.npy`` arrays and a JSON
  header) behind checkpoints and training states.
* :mod:`~mlds_jax.io.safetensors`: PyTorch-readable weights.
* :mod:`~mlds_jax.io.checkpoint`: ``save``/``load`` of a model (either format).
* :mod:`~mlds_jax.io.train_state`: what ``fit`` needs to resume a run.
* :mod:`~mlds_jax.io.run_directory`: the command line's run directories, published as one set.

Nothing here imports the training code.  ``mlds_jax.save`` and ``mlds_jax.load`` are
:func:`mlds_jax.io.checkpoint.save` and :func:`mlds_jax.io.checkpoint.load`.
"""
