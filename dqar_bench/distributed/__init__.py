"""Running past one process: torchrun ranks, data-parallel quality, signals reduced over ranks.

`world` joins the process group (or is a World of one), `launch` re-runs a command under
`torch.distributed.run`, `fid` gathers FID features from every rank, `signals` reduces a
gate's signals over a batch or sequence split across ranks and makes ranks decide alike.
"""

from dqar_bench.distributed.world import RankError, World, init_world, launched_by_torchrun

__all__ = ["RankError", "World", "init_world", "launched_by_torchrun"]
