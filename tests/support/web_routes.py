"""The paths of every route, for tests that go through all of them."""

from appliance.web.app import routes

ROUTE_PATHS = sorted({route.path.replace("{id}", "0123456789abcdef").replace("{name:path}", "tiny.gguf")
                      for route in routes()})
