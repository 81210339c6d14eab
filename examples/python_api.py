"""Run a suite written in Python and read its table as a pandas DataFrame.

    python examples/python_api.py [RUN_DIR]

The suite is the one a YAML file would hold (`dqar-bench schema` describes both): the
tiny built-in DiT on the CPU, the untouched model against the interval gate that reuses
every other step. It takes a few seconds.
"""

from __future__ import annotations

import sys

from dqar_bench import Case, Suite, run


def main(output: str | None) -> None:
    suite = Suite(
        name="python-api-example",
        model="dit-tiny",
        sampler={"name": "ddim", "steps": 6},
        class_labels=[1, 2],
        device="cpu",
        timing={"warmup": 0, "repeats": 2},
        cases=[
            Case(name="baseline"),
            Case(name="every-2", gate={"name": "interval", "every": 2}),
        ],
    )
    frame = run(suite, output, progress=lambda line: None)
    print(frame[["case", "parts", "reuse_ratio", "speedup", "psnr_db"]].to_string(index=False))
    print(f"records: {frame.attrs['run_dir']}/records.jsonl")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
