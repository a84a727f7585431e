"""Property: no request body, however malformed, makes the API answer 5xx (hypothesis, in-process)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient

from appliance import config, db as database, tokens
from appliance.web.app import create_app

pytestmark = pytest.mark.unit

ROUTES = ["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate", "/api/show", "/conversations"]
KEYS = ["model", "messages", "prompt", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "top_k", "seed", "stop", "n", "options", "stream_options", "ignore_eos", "role", "content", "title", "raw",
        "system", "num_predict", "include_usage"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                    st.text(max_size=30), st.sampled_from(["tiny", "paladin", "user", "assistant", "system"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=12)
bodies = st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=8), values)


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz")
    cfg = config.parse({"data_dir": str(data), "inference": {"threads": 1, "context_tokens": 128, "max_tokens": 4}})
    token = tokens.create(database.connect(cfg.data.database), "fuzz")
    with TestClient(create_app(cfg, tiny_model, prove=False), headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_no_body_causes_a_server_error(client, route, body):
    response = client.post(route, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (route, body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error if isinstance(error, str) else error["message"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=200))
def test_no_byte_string_causes_a_server_error(client, route, raw):
    assert client.post(route, content=raw).status_code < 500
