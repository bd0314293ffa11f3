"""Child process of ``experiments.benchmark --scale`` (run with forced host devices in XLA_FLAGS).

  python -m experiments._bench_scale BATCH_SIZE HISTORY_LEN   # prints {"rate": examples/s}
"""
from __future__ import annotations

import json
import sys

from experiments.benchmark import model_config, train_step_rate

if __name__ == "__main__":
    batch_size, history_len = int(sys.argv[1]), int(sys.argv[2])
    print(json.dumps({"rate": train_step_rate(model_config(), batch_size, history_len, steps=3, repeats=3)}))
