"""What a launcher prints: quiet logs by default, progress bars on a terminal.

Call ``quiet_output()`` first thing in a launcher's ``main``:

* absl (and orbax, which logs through absl) INFO lines are off unless ``--verbosity`` was given;
* JAX's "Unable to initialize backend 'tpu'" probe message is dropped on CPU / GPU machines
  (it is an INFO record of the ``jax._src.xla_bridge`` logger; the rest of that logger stays);
* ``--nouse_tqdm`` (``experiments._flags``) turns progress bars into plain periodic lines (also the
  case off a terminal).
"""
from __future__ import annotations

import logging as std_logging

from absl import flags, logging

from iarn_jax import progress

FLAGS = flags.FLAGS


class _DropTpuProbe(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return "Unable to initialize backend 'tpu'" not in record.getMessage()


def quiet_output() -> None:
    """Applies ``--verbosity`` and ``--use_tqdm`` (after absl has parsed them)."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("jax._src.xla_bridge").addFilter(_DropTpuProbe())
    progress.set_use_tqdm(FLAGS.use_tqdm)
