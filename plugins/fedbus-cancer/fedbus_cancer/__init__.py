"""fedbus-cancer: the ``cancer-logreg`` fedbus plugin (logistic regression, breast-cancer data).

Modules: ``data`` (loading, standardisation, split, shards), ``plugin`` (the model, the
``Plugin`` implementation and its entry-point factory ``create``).
"""
