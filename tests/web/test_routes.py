"""Every route and the identity it requires: a new route cannot be public by accident."""

import pytest
from starlette.routing import Mount

from appliance.web.app import routes
from appliance.web.auth import Identity

pytestmark = pytest.mark.unit
PUBLIC, TOKEN = Identity.PUBLIC, Identity.TOKEN

# The table docs/api.md describes.  Adding a route means adding it here, with the identity it needs.
EXPECTED = {
    ("/health", "GET"): PUBLIC,
    ("/metrics", "GET"): TOKEN,
    ("/v1/chat/completions", "POST"): TOKEN,
    ("/v1/completions", "POST"): TOKEN,
    ("/v1/models", "GET"): TOKEN,
    ("/api/chat", "POST"): TOKEN,
    ("/api/generate", "POST"): TOKEN,
    ("/api/tags", "GET"): TOKEN,
    ("/api/show", "POST"): TOKEN,
    ("/api/version", "GET"): TOKEN,
    ("/", "GET"): PUBLIC,
    ("/static", "GET"): PUBLIC,
    ("/conversations", "GET"): TOKEN,
    ("/conversations", "POST"): TOKEN,
    ("/conversations/{id}", "GET"): TOKEN,
    ("/conversations/{id}", "DELETE"): TOKEN,
    ("/conversations/{id}/messages", "POST"): TOKEN,
    ("/update", "GET"): TOKEN,
    ("/update", "POST"): TOKEN,
    ("/update/settings", "PUT"): TOKEN,
    ("/update/bundle", "PUT"): TOKEN,
}


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
    assert table() == EXPECTED


def test_public_routes_are_only_the_health_check_and_the_page_shell():
    assert sorted(path for (path, _), needs in table().items() if needs is PUBLIC) == ["/", "/health", "/static"]
