"""The SnapStart hooks (atcore/snapstart.py), run as Lambda's runtime would: before the snapshot
nothing that must not be shared stays in memory; after a restore random draws differ."""

from __future__ import annotations

import random

import snapshot_restore_py

from atcore import config, db, snapstart


def test_hooks_are_registered_when_atcore_db_is_imported():
    before = [hook for hook, _args, _kwargs in snapshot_restore_py.get_before_snapshot()]
    after = [hook for hook, _args, _kwargs in snapshot_restore_py.get_after_restore()]
    assert snapstart.forget_connections_and_credentials in before
    assert snapstart.reseed_random in after


def test_before_snapshot_closes_pooled_connections_and_forgets_the_secret(monkeypatch):
    closed = []

    class Pooled:
        def close(self):
            closed.append(self)

    pooled = Pooled()
    db._pool.give_back(pooled)  # type: ignore[arg-type]
    monkeypatch.setenv("DB_HOST", "db.example")
    config.database_settings.cache_clear()
    assert config.database_settings().host == "db.example"
    monkeypatch.setenv("DB_HOST", "other.example")  # e.g. the secret changed since init

    for hook, args, kwargs in snapshot_restore_py.get_before_snapshot():
        hook(*args, **kwargs)

    assert closed == [pooled]
    assert config.database_settings().host == "other.example"
    config.database_settings.cache_clear()


def test_after_restore_reseeds_random():
    random.seed(42)
    copy_of_snapshot = random.getstate()
    expected_without_hook = random.random()
    random.setstate(copy_of_snapshot)
    for hook, args, kwargs in snapshot_restore_py.get_after_restore():
        hook(*args, **kwargs)
    assert random.random() != expected_without_hook
