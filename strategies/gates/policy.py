"""Gate `policy`: a small learned MLP says, per block, whether reusing now is safe.

The MLP reads the features of `dqar_bench.policy.features` (attention entropy, log latent
SNR, latent RMS, normalised timestep and block position) and gives the probability that
reusing the block's cache at this step leaves the final output within the tolerance it
was traced with (`dqar-bench trace`, `dqar-bench train-policy`). All blocks are decided in
one batched call on the CPU, from host floats the strategy gathered once per step, so
deciding adds no device synchronisation. The shipped default was trained on `dit-tiny`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.errors import DqarError
from dqar_bench.policy.features import SIGNALS as POLICY_SIGNALS, feature_rows
from dqar_bench.policy.model import SHIPPED_WEIGHTS, PolicyMLP, load_policy


@dataclass
class Policy(Gate):
    """Learned MLP on (entropy, SNR, latent norm, t, block): reuse where P(safe) > threshold."""

    PLUGIN_NAME = "policy"
    SIGNALS = POLICY_SIGNALS

    weights: str = field(default=str(SHIPPED_WEIGHTS), metadata={"help": "policy .safetensors file (relative: from the current directory)"})
    threshold: float = field(default=0.5, metadata={"help": "reuse where P(safe) is above this, in (0, 1)"})

    _model: PolicyMLP = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"parameter 'threshold' must be in (0, 1), got {self.threshold}")
        try:
            self._model = load_policy(self.weights)
        except DqarError as exc:
            raise ValueError(f"parameter 'weights': {exc}") from None

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        safe = (self._model.probability(feature_rows(ctx, len(eligible))) > self.threshold).tolist()
        return [bool(s) and e for s, e in zip(safe, eligible)]


@hookimpl
def register_gates():
    return [Policy]
