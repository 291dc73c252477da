"""fedbus-digits: the ``digits-mlp`` fedbus plugin (a numpy MLP on scikit-learn's digits).

Modules: ``mlp`` (the network and SGD), ``data`` (split, shards, test slices), ``plugin``
(the ``Plugin`` implementation and its entry-point factory ``create``).
"""
