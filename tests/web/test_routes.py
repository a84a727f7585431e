"""Every route and the identity it requires: a new route cannot be public by accident."""

import pytest
from starlette.routing import Mount

from appliance.web.app import routes
from appliance.web.auth import Identity

pytestmark = pytest.mark.unit
PUBLIC, TOKEN = Identity.PUBLIC, Identity.TOKEN

# The table docs/api.md describes.  Adding a route means adding it here, with the identity it needs.
EXPECTED = """
GET    /health                       public
GET    /                             public
GET    /static                       public
GET    /metrics                      token
POST   /v1/chat/completions          token
POST   /v1/completions               token
GET    /v1/models                    token
POST   /api/chat                     token
POST   /api/generate                 token
GET    /api/tags                     token
POST   /api/show                     token
GET    /api/version                  token
GET    /conversations                token
POST   /conversations                token
GET    /conversations/{id}           token
DELETE /conversations/{id}           token
POST   /conversations/{id}/messages  token
GET    /models                       token
PUT    /models/default               token
GET    /update                       token
POST   /update                       token
PUT    /update/settings              token
PUT    /update/bundle                token
"""
IDENTITIES = {"public": PUBLIC, "token": TOKEN}


def expected() -> dict:
    rows = (line.split() for line in EXPECTED.strip().splitlines())
    return {(path, method): IDENTITIES[needs] for method, path, needs in rows}


def table() -> dict:
    found = {}
    for route in routes():
        assert hasattr(route, "needs"), f"{route.path} declares no identity (use auth.route or auth.public_files)"
        methods = {"GET"} if isinstance(route, Mount) else route.methods - {"HEAD"}
        for method in methods:
            assert (route.path, method) not in found, f"{method} {route.path} is declared twice"
            found[route.path, method] = route.needs
    return found


def test_every_route_declares_its_identity_and_the_table_is_complete():
    assert table() == expected()


def test_public_routes_are_only_the_health_check_and_the_page_shell():
    assert sorted(path for (path, _), needs in table().items() if needs is PUBLIC) == ["/", "/health", "/static"]
