"""A SecAgg+ round's integer arrays: taken from each counted masked input (ARCHITECTURE.md §4).

The masked vector holds only the float arrays' delta; a trainer sends its integer arrays (a
BatchNorm's int64 ``num_batches_tracked``) beside it in ``MaskedInput.carried``
(``agent.roles.trainer.carried``; sealed to the aggregator, signed, integer dtypes only,
which the codec enforces). ``receive`` hands the masked input to the round and keeps the
carried arrays of the members whose masked input the SecAgg+ server counted, so the new model
takes the lower median of the *survivors'* arrays (``agent.strategy.carried``), as on the
plain path. A masked input whose carried arrays are unlike the model's integer arrays is
refused whole (``update_rejected``, ``carried_mismatch``): its sender becomes a dropout whose
masks the unmask removes, never a sum with a malformed member in it.
"""

from __future__ import annotations

import structlog

from agent.errors import ProtocolError
from agent.messages.bodies import MaskedInput
from agent.messages.tensors import to_arrays
from agent.roles.aggregator.secure_round import SecureRound
from agent.strategy.carried import CarriedValues

log = structlog.get_logger(__name__)


def receive(secure: SecureRound, carried: CarriedValues, sender: str, body: MaskedInput) -> None:
    """``body`` to ``secure`` (``SecureRound.on_masked_input``); its carried arrays, once
    checked, kept in ``carried`` when the server counted it (the first counted one: a later
    masked input from the same sender is ignored by the server, and so here)."""
    try:
        arrays = to_arrays(body.carried)
        if arrays:
            carried.check(arrays)
    except ProtocolError as exc:  # DecodeError (the codec checked them) or RefusedError
        log.warning("update_rejected", agent=sender, reason=exc.reason, detail=str(exc))
        return
    counted = sender in secure.state.survivors
    secure.on_masked_input(sender, body)
    if arrays and not counted and sender in secure.state.survivors:
        carried.report(sender, arrays)
