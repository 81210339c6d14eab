#!/usr/bin/env python
"""Retrain the reference DiT and digit classifier into dqar_bench/model/reference/weights/.

Usage: python scripts/train_reference.py [--out DIR] [--seed 0] [--steps N] [--threads 1] [--evaluate-only]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a plain checkout, without installing the package first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference_training.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
