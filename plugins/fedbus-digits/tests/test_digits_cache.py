"""digits-mlp's shard cache: built once, then read without scikit-learn, keyed by the
shard's recipe, rebuilt when unreadable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fedbus_digits import shard_cache
from fedbus_digits.data import Partition
from fedbus_digits.options import DigitsOptions
from fedbus_digits.plugin import DigitsPlugin

RECIPE = {
    "partition": Partition.DIRICHLET,
    "alpha": 0.5,
    "seed": 0,
    "test_fraction": 0.2,
    "min_examples": 10,
}


def _files(state: Path) -> list[Path]:
    return sorted((state / shard_cache.CACHE_DIR).glob("shard-*.npz"))


def test_a_cached_shard_is_read_back_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = shard_cache.cached_agent_data(tmp_path, 1, 4, **RECIPE)
    assert len(_files(tmp_path)) == 1

    def no_build(*args: object, **kw: object) -> None:
        raise AssertionError("built again: the cache was not used")

    monkeypatch.setattr(shard_cache, "agent_data", no_build)
    read = shard_cache.cached_agent_data(tmp_path, 1, 4, **RECIPE)
    for a, b in [(built.train, read.train), (built.test, read.test)]:
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        assert b.x.dtype == np.float32
        assert b.y.dtype == np.int64
        assert not b.x.flags.writeable


def test_another_recipe_never_reads_the_file(tmp_path: Path) -> None:
    first = shard_cache.cached_agent_data(tmp_path, 0, 4, **RECIPE)
    other = shard_cache.cached_agent_data(tmp_path, 0, 4, **{**RECIPE, "seed": 1})
    iid = shard_cache.cached_agent_data(tmp_path, 0, 4, **{**RECIPE, "partition": Partition.IID})
    assert len(_files(tmp_path)) == 3
    assert not np.array_equal(first.train.y, other.train.y)
    assert not np.array_equal(first.train.y, iid.train.y)


def test_an_unreadable_file_is_rebuilt(tmp_path: Path) -> None:
    built = shard_cache.cached_agent_data(tmp_path, 2, 4, **RECIPE)
    (path,) = _files(tmp_path)
    path.write_bytes(b"not an npz")
    again = shard_cache.cached_agent_data(tmp_path, 2, 4, **RECIPE)
    np.testing.assert_array_equal(built.train.x, again.train.x)
    assert shard_cache._read(path) is not None  # rewritten whole


def test_the_plugin_uses_its_state_dir(tmp_path: Path) -> None:
    options = DigitsOptions(agent_index=0, num_agents=2)
    plugin = DigitsPlugin(options, state_dir=tmp_path)
    assert len(_files(tmp_path)) == 1
    assert plugin.num_examples() == DigitsPlugin(options).num_examples()
