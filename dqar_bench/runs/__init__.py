"""Running suites: the runner, one case's run, resume, policy traces, the Python API's `run`, and torchrun.

Named `runs` rather than `run` so that `dqar_bench.run` is the API's function alone
(`from dqar_bench import run`), not also a package that importing would shadow it with.

Imports: every other layer; only `cli`, `testing` and the package's own names stand above it.
"""
