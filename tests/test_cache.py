"""The embedding cache on real folders: shared permissions, and a cache that cannot be written."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

from persam.model.cache import EmbeddingCache


def entry() -> dict:
    return {
        "features": torch.arange(6.0).reshape(1, 6, 1, 1),
        "input_size": [4, 4],
        "original_size": [4, 4],
    }


def test_entries_are_readable_by_the_group_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        cache = EmbeddingCache(tmp_path / "cache" / "embeddings")
        cache.store("ab" + "0" * 38, entry())
    finally:
        os.umask(old)
    path = tmp_path / "cache" / "embeddings" / "ab" / ("ab" + "0" * 38 + ".pt")
    assert stat.S_IMODE(path.stat().st_mode) & 0o040, oct(path.stat().st_mode)
    for folder in (path.parent, path.parent.parent):
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert mode & 0o070 == 0o070, (folder, oct(mode))  # the group may read and add entries
    # the folder above the cache root keeps the user's own permissions
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) & 0o070 == 0
    assert torch.equal(cache.load("ab" + "0" * 38)["features"], entry()["features"])


def _unwritable(tmp_path, how: str):
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; the file case covers the path")
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o555)
        return root / "embeddings"
    blocker = tmp_path / "a_file"  # a file where the cache folder should be
    blocker.write_text("not a folder")
    return blocker / "embeddings"


@pytest.mark.parametrize("how", ["chmod", "file"])
def test_unwritable_cache_warns_once_and_goes_on(tmp_path, caplog, how):
    root = _unwritable(tmp_path, how)
    cache = EmbeddingCache(root)
    with caplog.at_level(logging.WARNING, logger="persam.model.cache"):
        for i in range(3):
            key = f"{i:02d}" + "0" * 38
            assert cache.load(key) is None
            cache.store(key, entry())  # no exception: the run goes on
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(root) in warnings[0] and "going on without caching" in warnings[0]
    assert "cache.enabled=false" in warnings[0]
    assert cache.stats.misses == 3 and not cache.writable
