"""The floor every other layer stands on: errors, the plugin hooks and registry, the part
base classes and the step context they see, safe weight loading, and the process group.

Nothing here imports from another layer of dqar_bench.
"""
