"""The round ledger: a signed, hash-chained record of every round (ARCHITECTURE.md §6).

``record`` (the canonical entry and the signed record), ``chain`` (signing, checking one
record, linking two), ``store`` (the files under ``state_dir/ledger``), ``book`` (the
aggregator's appender), ``head`` (the newest record an agent has accepted) and ``verify``
(a whole ledger, offline: ``fedbus ledger verify``).
"""
