"""Lambda SnapStart runtime hooks (the API functions, when the template's SnapStart=true).

With SnapStart, Lambda runs a function's init once, when a version is published, snapshots the
memory of that execution environment, and starts every later environment from a copy of it.
Whatever the init left in memory is therefore shared by all of them, and was made minutes or days
before the first request:

- database connections: none is opened during init (atcore.db opens them on first use), but if
  one were, every restored environment would hold a copy of the same socket; the pool is emptied
  before the snapshot, so the first request after a restore connects anew;
- the database secret: read on first use (atcore.config) and cached; the cache is emptied before
  the snapshot, so a restored environment reads the current password (rotation may have happened);
- random state: `random` was seeded once, at init, so every restored environment would draw the
  same "random" numbers (retry jitter); it is re-seeded from os.urandom after each restore.

snapshot_restore_py only records the hooks; Lambda's runtime calls them. Elsewhere (the local run,
tests, functions without SnapStart) nothing calls them and registering costs nothing.
"""

from __future__ import annotations

import random

from snapshot_restore_py import register_after_restore, register_before_snapshot


@register_before_snapshot
def forget_connections_and_credentials() -> None:
    from atcore import config, db

    db.reset()
    config.database_settings.cache_clear()


@register_after_restore
def reseed_random() -> None:
    random.seed()  # from os.urandom: each restored environment gets its own sequence
