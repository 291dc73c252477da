"""Server-side strategies behind one ``Strategy`` protocol (``agent.strategy.base``), fed one
``AggregatedUpdate`` (``agent.strategy.update``) per round by both fit paths (plain and
SecAgg+); ``agent.strategy.factory.build_strategy`` makes the configured one.

The package re-exports nothing, so a trainer, which needs only ``agent.strategy.carried``,
does not import every strategy (issue 15)."""
