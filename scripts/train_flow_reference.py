#!/usr/bin/env python
"""Retrain digits-flow (the rectified-flow reference DiT) into dqar_bench/model/reference/weights/digits-flow/.

Usage: python scripts/train_flow_reference.py [--out DIR] [--seed 0] [--steps N] [--shift S] [--threads 1] [--evaluate-only]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a plain checkout, without installing the package first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference_training.train_flow import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
