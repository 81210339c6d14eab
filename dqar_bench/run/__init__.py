"""Running suites: the runner, one case's run, resume, policy traces, and torchrun.

Imports: every other layer; only `cli`, `testing` and the package's API stand above it.
"""
