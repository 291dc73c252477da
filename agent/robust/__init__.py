"""Bounded influence of one device (ARCHITECTURE.md §12): what one enrolled, authenticated but
malicious device can do to the model, and where that is bounded.

- ``settings``: ``[aggregator.robust]`` (``RobustConfig``) and its enums.
- ``bounds``: the checks one plain update passes on arrival (finite, the weight it may
  claim, its delta's L2 norm: clip or reject), and the cohort-relative norm bound.
- ``aggregate``: robust rules for plain rounds: coordinate-wise median, trimmed mean,
  Multi-Krum, each with its cost.
- ``secure``: what the unmasked SecAgg+ mean may be, given clipped, quantized and
  weight-capped inputs (the aggregator aborts the round otherwise).
- ``guard``: every new global model is finite and moved a bounded distance, or it is not
  published.
- ``evaluation``: range checks of federated-evaluation results.

This package is numeric only (numpy and ``agent.errors``): the roles call it.
"""
