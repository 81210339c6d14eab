"""Running past one process under torchrun: `launch` re-runs a command under
`torch.distributed.run`, `runs` keeps one run directory for all ranks, `shares` splits and
gathers a case's seeds and quality features, `fid` gathers FID features from every rank,
`teams` groups ranks for context-parallel cases.

The process group itself is `dqar_bench.core.world`; signals reduced over ranks are
`dqar_bench.strategy.rank_signals`.
"""
