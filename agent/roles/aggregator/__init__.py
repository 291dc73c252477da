"""The aggregator role: admit agents, run rounds, aggregate, evaluate, finish.

Listeners (kind → handler, round policy):

=============  ==================  ========  ==========================================
kind           topic               rounds    handled by (may send)
=============  ==================  ========  ==========================================
join           join                any       ``Admission`` (join_accepted/_rejected,
                                             model_para to the inbox)
model_update   update/{agent_id}   current   ``CohortFit`` → the open ``PlainRound``
metrics        metrics/{agent_id}  current   ``FederatedEvaluation`` (admitted senders)
status         status/{agent_id}   any       ``LivenessTracker``; offline: ``CohortFit``
advertise_keys secagg/…/{id}       current   } ``CohortFit`` → the open ``SecureRound``
share_keys     secagg/…/{id}       current   } (relay_keys, relay_shares and
masked_input   update/{agent_id}   current   } unmask_request to the inboxes)
unmask         secagg/…/{id}       current   }
=============  ==================  ========  ==========================================

The parts, one module each:

- ``admission``: joins and the admitted set;
- ``round``: one round, from the model in force to its ``RoundRecord`` (cohort via
  ``cohort``, fit via ``fit`` over ``plain_round`` / ``secure_round``, dropouts,
  ``evaluation``), and ``schedule``: the whole run;
- ``status``: the ``RoundPhase`` and what is published as ``FederationStatus``;
- ``persistence``: each round committed under ``runs/<run_id>/rounds/NNNN/``; ``resume``:
  reading a run back after a restart; ``runs``: run ids and directories; ``service``: the
  long-lived process (successive runs, enrollment, the revocation watch);
- ``records``: what is recorded about rounds and agents;
- ``role``: the ``Aggregator``, which builds the parts and holds the listener table.
"""

from agent.roles.aggregator.role import Aggregator

__all__ = ["Aggregator"]
