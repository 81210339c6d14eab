"""Gate `policy`: a small learned MLP says, per block, whether reusing now is safe.

The MLP reads the features of `dqar_bench.strategy.policy.features` (attention entropy, log latent
SNR, latent RMS, normalised timestep and block position) and gives the probability that
reusing the block's cache at this step leaves the final output within the tolerance it
was traced with (`dqar-bench trace`, `dqar-bench train-policy`). All blocks are decided in
one batched call on the CPU, from host floats the strategy gathered once per step, so
deciding adds no device synchronisation.

`weights` is a file or the name of a policy shipped in `dqar_bench/strategy/policy/weights/`
(`dit-tiny`, the default, or `digits-dit`; each traced on that model, see the README
there). A name works from any directory, so a suite can point at a shipped policy
without knowing where the package is installed; anything else is a path, relative to
the current directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.core.errors import DqarError
from dqar_bench.strategy.policy.features import ENTROPY_UNIT, SIGNALS as POLICY_SIGNALS, SNR_SOURCE, feature_rows
from dqar_bench.strategy.policy.model import WEIGHTS_DIR, PolicyMLP, load_policy

SUFFIX = ".safetensors"


@dataclass
class Policy(Gate):
    """Learned MLP on (entropy, SNR, latent norm, t, block): reuse where P(safe) > threshold."""

    PLUGIN_NAME = "policy"
    SIGNALS = POLICY_SIGNALS
    THRESHOLD = "threshold"
    THRESHOLD_RAISES_REUSE = False  # reuse where P(safe) > threshold: a higher bar reuses less
    snr: ClassVar[str] = SNR_SOURCE  # the signals' forms its features were traced on
    entropy: ClassVar[str] = ENTROPY_UNIT

    weights: str = field(default="dit-tiny", metadata={"help": "shipped policy name (dit-tiny, digits-dit) or .safetensors file (relative: from the current directory)"})
    threshold: float = field(default=0.5, metadata={"range": (0.05, 0.95), "help": "reuse where P(safe) is above this, in (0, 1)"})

    _model: PolicyMLP = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"parameter 'threshold' must be in (0, 1), got {self.threshold}")
        try:
            self._model = load_policy(resolve_weights(self.weights))
        except DqarError as exc:
            hint = f" (shipped policies: {', '.join(shipped_policies())})" if _is_name(self.weights) else ""
            raise ValueError(f"parameter 'weights': {exc}{hint}") from None

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        safe = (self._model.probability(feature_rows(ctx, len(eligible))) > self.threshold).tolist()
        return [bool(s) and e for s, e in zip(safe, eligible)]


def shipped_policies() -> list[str]:
    """Names of the policies shipped with the package."""
    return sorted(p.name.removesuffix(SUFFIX) for p in WEIGHTS_DIR.glob(f"*{SUFFIX}"))


def resolve_weights(weights: str) -> Path:
    """A shipped policy's name -> its file in the package; anything else is a path as given."""
    if _is_name(weights) and weights in shipped_policies():
        return WEIGHTS_DIR / f"{weights}{SUFFIX}"
    return Path(weights)


def _is_name(weights: str) -> bool:
    """A bare name (no directory, no suffix), as opposed to a path to a file."""
    path = Path(weights)
    return len(path.parts) == 1 and not path.suffix


@hookimpl
def register_gates():
    return [Policy]
