"""Response bodies on their own (no database)."""

from __future__ import annotations

import json

from atcore.api import dumps_json


def test_bodies_are_utf8_not_escaped():
    assert dumps_json({"é": "🙂\u2028"}) == '{"é":"🙂\u2028"}'
    assert json.loads(dumps_json({"é": "🙂\u2028"})) == {"é": "🙂\u2028"}
