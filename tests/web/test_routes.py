"""Every route and the identity it requires: a new route cannot be public by accident."""

import pytest
from starlette.routing import Mount

from appliance.web.app import routes
from appliance.web.auth import Identity

pytestmark = pytest.mark.unit
IDENTITIES = {"public": Identity.PUBLIC, "token": Identity.TOKEN, "owner": Identity.OWNER, "setup": Identity.SETUP}

# The table docs/api.md describes.  Adding a route means adding it here, with the identities it accepts
# (comma-separated: any one of them will do).
EXPECTED = """
GET    /health                       public
GET    /static                       public
GET    /setup                        public
POST   /setup/code                   public
GET    /login                        public
POST   /login                        public
GET    /metrics                      token
POST   /v1/chat/completions          token
POST   /v1/completions               token
GET    /v1/models                    token
POST   /v1/embeddings                token
POST   /api/chat                     token
POST   /api/generate                 token
GET    /api/tags                     token
POST   /api/show                     token
GET    /api/version                  token
GET    /api/ps                       token
DELETE /api/delete                   token
POST   /api/pull                     token
POST   /api/embed                    token
POST   /api/embeddings               token
GET    /                             owner
GET    /conversations                owner,token
POST   /conversations                owner,token
GET    /conversations/{id}           owner,token
PATCH  /conversations/{id}           owner,token
DELETE /conversations/{id}           owner,token
POST   /conversations/{id}/messages  owner,token
POST   /conversations/{id}/regenerate owner,token
GET    /models                       owner,token,setup
PUT    /models/default               owner,token,setup
GET    /models/catalog               owner,token,setup
GET    /models/download              owner,token,setup
POST   /models/download              owner,token,setup
DELETE /models/download              owner,token,setup
PUT    /models/upload                owner,token,setup
DELETE /models/{name:path}           owner,token
GET    /manage/models                owner
GET    /update                       owner,token
POST   /update                       owner,token
PUT    /update/settings              owner,token
PUT    /update/bundle                owner,token
GET    /manage/updates               owner
POST   /setup/owner                  setup
POST   /setup/device                 setup
POST   /setup/model                  setup
POST   /setup/privacy                setup
POST   /setup/finish                 setup
POST   /logout                       owner
GET    /tokens                       owner
POST   /tokens                       owner
POST   /tokens/revoke                owner
GET    /access                       owner
POST   /access                       owner
GET    /system/firewall              owner
PUT    /system/firewall              owner
GET    /system                       owner,token
GET    /manage/system                owner
GET    /governor                     owner,token
GET    /governor/history             owner,token
PUT    /governor/settings            owner,token
GET    /manage/governor              owner
GET    /backups                      owner
POST   /backups                      owner
PUT    /backups/settings             owner
POST   /backups/key                  owner
DELETE /backups/key                  owner
PUT    /backups/sealed-key           owner
GET    /backups/sealed-key           owner
DELETE /backups/sealed-key           owner
GET    /backups/files/{name}         owner
DELETE /backups/files/{name}         owner
POST   /backups/files/{name}/restore owner
POST   /backups/files/{name}/stick   owner
POST   /backups/sticks               owner
PUT    /backups/restore              owner,setup
GET    /backups/restore              owner,setup
DELETE /backups/restore              owner,setup
POST   /backups/restore/confirm      owner,setup
GET    /manage/backups               owner
GET    /setup/restore                setup
"""


def expected() -> dict:
    rows = (line.split() for line in EXPECTED.strip().splitlines())
    return {(path, method): frozenset(IDENTITIES[n] for n in needs.split(",")) for method, path, needs in rows}


def table() -> dict:
    found = {}
    for route in routes():
        assert hasattr(route, "needs"), f"{route.path} declares no identity (use auth.route, auth.page or " \
                                        "auth.public_files)"
        methods = {"GET"} if isinstance(route, Mount) else route.methods - {"HEAD"}
        for method in methods:
            assert (route.path, method) not in found, f"{method} {route.path} is declared twice"
            found[route.path, method] = route.needs
    return found


def test_every_route_declares_its_identity_and_the_table_is_complete():
    assert table() == expected()


def test_public_routes_are_the_health_check_static_files_and_the_ways_in():
    """Only what a stranger needs: whether the box is up, the pages' scripts, the setup code's form (locked
    for good once setup is finished) and the login form."""
    public = sorted({path for (path, _), needs in table().items() if needs == {Identity.PUBLIC}})
    assert public == ["/health", "/login", "/setup", "/setup/code", "/static"]
