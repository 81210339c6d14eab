"""How parts run on a model: the strategy that asks scheduler, gate, cache and quantizer each
step; the adapter that wraps a model's blocks; signals, storage, execution modes, diffusers'
own hooks, context parallelism and the learned policy.

The built-in parts themselves are in `dqar_bench.strategies`. Imports: `core`, `measure`,
`model`.
"""
