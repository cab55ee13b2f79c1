"""Named SQL queries, loaded once from the .sql files beside this module.

A file holds blocks that start with `-- name: <query_name>`; parameters use pg8000's
`:name` style and are always passed separately, never formatted into the text.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@functools.cache
def _all_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith(".sql"):
            for name, body in parse_queries(entry.read_text(encoding="utf-8")).items():
                if name in queries:
                    raise ValueError(f"query {name!r} is defined twice")
                queries[name] = body
    return queries


def query(name: str) -> str:
    return _all_queries()[name]
