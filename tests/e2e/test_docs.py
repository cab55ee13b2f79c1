"""The local run serves the API's documentation: the OpenAPI document and a Swagger UI that works
offline (its script and style come from the local run, not a CDN)."""

from __future__ import annotations

import json
import re

import pytest

from devtools.support.functions import ROOT
from devtools.support.http import request

pytestmark = pytest.mark.e2e


def test_openapi_json_is_the_generated_document(api):
    status, document, content_type = request("GET", f"{api}/openapi.json")
    assert (status, content_type) == (200, "application/json")
    assert document == json.loads((ROOT / "docs" / "openapi.json").read_text())


def test_swagger_ui_loads_its_assets_locally(api):
    status, page, content_type = request("GET", f"{api}/docs")
    assert status == 200 and content_type.startswith("text/html")
    assert '"title": "AT API"' in page  # the document is embedded
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    assert sorted(assets) == ["/docs/swagger-ui-bundle.min.js", "/docs/swagger-ui.min.css"]
    for asset in assets:
        status, body, content_type = request("GET", f"{api}{asset}")
        assert status == 200 and len(body) > 10_000, asset
        assert content_type.split(";")[0] in ("text/javascript", "application/javascript", "text/css")
    assert request("GET", f"{api}/docs?format=json")[1]["info"]["title"] == "AT API"
    assert request("GET", f"{api}/docs/app.py")[0] == 403  # only the two assets; like any unknown route
