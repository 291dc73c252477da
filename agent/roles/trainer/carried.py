"""The trainer's integer arrays under SecAgg+: sent beside the masked input, never masked.

SecAgg+ masks only the float arrays of the model delta (``agent.strategy.update``
``masked_values``): an integer array (a BatchNorm's int64 ``num_batches_tracked``) cannot be
quantized, clipped and averaged without losing what it counts. ``beside`` puts the trained
model's integer arrays, as they are, in ``MaskedInput.carried``; the body is HPKE-sealed to the
aggregator and signed like every masked input, and the aggregator takes the survivors' lower
median of them (``agent.strategy.carried``), so they advance as on the plain path.

What this reveals to the aggregator (and to nobody else): each member's integer arrays. For
a BatchNorm counter that is the number of batches trained so far, which follows from the
num_examples declared at join and the fit config; a plugin whose integer arrays are private
(a token-count table, say) should set ``[trainer] reveal_integer_arrays = false``. No float
value is ever sent in the clear: only non-float arrays are taken, and the aggregator's codec
refuses a float one.
"""

from __future__ import annotations

import msgspec

from agent.messages.bodies import MaskedInput
from agent.messages.tensors import to_tensors
from agent.plugin.api import Weights
from agent.strategy.carried import integer_arrays


def beside(masked: MaskedInput, weights: Weights, *, reveal: bool) -> MaskedInput:
    """``masked`` with ``weights``' integer arrays in ``carried`` (model order); unchanged
    when ``reveal`` is false or the model has none."""
    arrays = integer_arrays(weights)
    if not reveal or not arrays:
        return masked
    return msgspec.structs.replace(masked, carried=to_tensors(arrays))
