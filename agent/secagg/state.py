"""SecAgg+ stages, their one legal order, and the values the stages exchange.

Stages (Bonawitz et al., CCS 2017, Fig. 4 rounds 0-4; Bell et al., CCS 2020, Alg. 2)::

    setup → advertise_keys → share_keys → collect_masked_input → unmask → done
      └──────────┴──────────────┴───────────────┴──────────────────┴──→ aborted

``move`` is the only way a state changes stage: forward by exactly one, or to ``aborted`` from
any stage that is not final. Everything else raises ``StageError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from agent.errors import StageError
from agent.secagg.keys import RoundContext
from agent.secagg.params import SecAggParams


class Stage(StrEnum):
    SETUP = "setup"
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    COLLECT_MASKED_INPUT = "collect_masked_input"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


ORDER: tuple[Stage, ...] = (
    Stage.SETUP,
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.COLLECT_MASKED_INPUT,
    Stage.UNMASK,
    Stage.DONE,
)
FINAL = frozenset({Stage.DONE, Stage.ABORTED})


def can_move(current: Stage, wanted: Stage) -> bool:
    """True for the next stage in ``ORDER``, or ``aborted`` from a stage that is not final."""
    if current in FINAL:
        return False
    if wanted is Stage.ABORTED:
        return True
    return wanted in ORDER and ORDER.index(wanted) == ORDER.index(current) + 1


class HasStage(Protocol):
    stage: Stage


def move(state: HasStage, wanted: Stage) -> None:
    """Advance ``state`` to ``wanted``. Raises ``StageError`` unless ``can_move``."""
    if not can_move(state.stage, wanted):
        raise StageError(state.stage, wanted)
    state.stage = wanted


def expect(state: HasStage, current: Stage) -> None:
    """Raises ``StageError`` unless ``state`` is in ``current`` (for receive functions)."""
    if state.stage is not current:
        raise StageError(state.stage, current)


@dataclass(frozen=True, slots=True)
class Setup:
    """What the aggregator announces to the cohort before ``advertise_keys``.

    Attributes:
        context: federation and round (bound into every key and ciphertext).
        params: k, t, quantization and ring.
        cohort: the cohort's agent ids, sorted; a client's Shamir x-coordinate is its index
            here plus one.
        graph_seed: 32 bytes that fix the neighbour graph.
        length: d, the number of model parameters (the masked vector has d + 1 words).
    """

    context: RoundContext
    params: SecAggParams
    cohort: tuple[str, ...]
    graph_seed: bytes
    length: int

    _x: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_x", {a: i + 1 for i, a in enumerate(self.cohort)})

    def x_of(self, agent_id: str) -> int:
        """The Shamir x-coordinate of a cohort member (1-based index), in O(1).

        Raises:
            ValueError: not a member (as ``tuple.index``).
        """
        x = self._x.get(agent_id)
        if x is None:
            raise ValueError(f"{agent_id!r} is not in the cohort")
        return x


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """``advertise_keys``: a client's two round public keys (raw X25519, 32 bytes each)."""

    enc: bytes
    mask: bytes


@dataclass(frozen=True, slots=True)
class RevealedShares:
    """``unmask``: shares a client reveals, keyed by the owner of the secret.

    ``self_seed`` holds shares of survivors' self-mask seeds, ``mask_key`` shares of dropped
    clients' mask private keys; never both for one owner. Each share is 64 bytes.
    """

    self_seed: dict[str, bytes]
    mask_key: dict[str, bytes]


def sign(a: str, b: str) -> int:
    """+1 when ``a`` adds the pairwise mask shared with ``b``, −1 when it subtracts it."""
    return 1 if a < b else -1
