"""Per-client limits: the buckets on a clock the test moves, then floods and token guessing against the
real service from several loopback addresses (127.0.0.0/8 is all the box's own)."""

import httpx
import pytest

from appliance.web.http import client_of
from appliance.web.ratelimit import Buckets
from tests.support.served import Service


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.unit
def test_a_burst_then_the_rate_and_each_client_has_its_own():
    clock = Clock()
    buckets = Buckets(rate=2, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(4)] == [0, 0, 0, 1]
    clock.now += 0.5
    assert [buckets.take("a"), buckets.take("a")] == [0, 1]
    assert buckets.take("b") == 0


@pytest.mark.unit
def test_refused_requests_take_nothing_and_retry_after_is_rounded_up():
    clock = Clock()
    buckets = Buckets(rate=10 / 60, burst=10, clock=clock)  # the default for wrong tokens
    assert [buckets.take("a") for _ in range(10)] == [0] * 10
    assert {buckets.take("a") for _ in range(100)} == {6}  # asking faster does not push the refill back
    clock.now += 5.5
    assert buckets.wait("a") == 1  # half a second left: never 0, or the client comes back too early
    clock.now += 0.5
    assert buckets.wait("a") == 0 and buckets.take("a") == 0 and buckets.wait("a") == 6


@pytest.mark.unit
def test_a_check_that_passed_gets_its_token_back_but_never_more_than_the_burst():
    buckets = Buckets(rate=1 / 60, burst=2, clock=Clock())
    assert [buckets.take("a"), buckets.take("a"), buckets.take("a")] == [0, 0, 60]
    buckets.refund("a")
    assert buckets.take("a") == 0 and buckets.take("a") == 60
    buckets.refund("a")
    buckets.refund("a")
    buckets.refund("a")
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 60]  # refunds fill up to the burst, no further


@pytest.mark.unit
def test_a_rate_of_0_is_no_limit():
    buckets = Buckets(rate=0, burst=1, clock=Clock())
    assert {buckets.take("a") for _ in range(1000)} == {0}


@pytest.mark.unit
def test_the_table_is_bounded_and_forgets_the_least_recently_seen():
    buckets = Buckets(rate=1, burst=1, clients=3, clock=Clock())
    assert [buckets.take(c) for c in "abc"] == [0, 0, 0]
    assert buckets.take("a") == 1  # seen again: now the most recent
    assert buckets.take("d") == 0  # b, the least recently seen, is forgotten
    assert buckets.take("b") == 0  # with a full bucket again (and c is forgotten)
    assert buckets.take("a") == 1
    for n in range(10_000):
        buckets.take(f"2001:db8::{n:x}")
    assert len(buckets._table) == 3


@pytest.mark.unit
@pytest.mark.parametrize("peer, client", [
    (("10.0.0.2", 5), "10.0.0.2"), (("::ffff:10.0.0.2", 5), "10.0.0.2"), (("2001:DB8:0::1", 5), "2001:db8::1"),
    (("testclient", 50000), "testclient"), (None, "")])
def test_a_client_is_its_address_and_ipv4_on_a_dual_stack_socket_is_ipv4(peer, client):
    assert client_of({"type": "http", "client": peer}) == client


@pytest.fixture(scope="module")
def strict(tiny_model, tmp_path_factory):
    """Limits low enough that a test trips them in a few requests, whatever the machine's speed: a flood
    of 25 needs 17 s to refill past its burst of 8, three wrong tokens 20 s to earn another try."""
    running = Service(tiny_model, tmp_path_factory.mktemp("strict"), config={"server": {
        "requests_per_second": 1, "request_burst": 8, "auth_failures_per_minute": 3}})
    yield running
    running.stop()


def from_address(service: Service, address: str, **kwargs) -> httpx.Client:
    return service.client(transport=httpx.HTTPTransport(local_address=address), **kwargs)


@pytest.mark.service
def test_a_flood_gets_429_with_retry_after_in_each_api_shape_and_others_are_served(strict):
    with from_address(strict, "127.0.0.3") as flood, from_address(strict, "127.0.0.2") as other:
        for path in ("/v1/models", "/api/tags"):
            refused = []
            for n in range(25):
                response = flood.get(path)
                assert response.status_code in (200, 429)
                if response.status_code == 429:
                    refused.append(response)
                if n in (10, 20):
                    assert other.get(path).status_code == 200  # another address is served meanwhile
            assert refused, "25 requests in a row were not limited"
            for response in refused:
                assert int(response.headers["retry-after"]) >= 1
                error = response.json()["error"]
                if path.startswith("/api/"):  # Ollama's shape
                    assert "too many requests from this address" in error
                else:
                    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
                    assert "too many requests from this address" in error["message"]
        metrics = other.get("/metrics").text
    assert 'paladin_requests_total{route="rate_limited",status="429"}' in metrics


@pytest.mark.service
def test_after_three_wrong_tokens_even_the_right_one_gets_429_but_public_pages_stay(strict):
    with from_address(strict, "127.0.0.4") as guesser, from_address(strict, "127.0.0.5") as owner:
        for guess in ("pal_a", "pal_b", "pal_c"):
            assert guesser.get("/v1/models", headers={"Authorization": f"Bearer {guess}"}).status_code == 401
        openai_shape, ollama_shape = guesser.get("/v1/models"), guesser.get("/api/tags")  # the right token
        assert guesser.get("/health").status_code == 200  # public routes need no token check
        assert owner.get("/v1/models").status_code == 200  # the owner's own address is not locked out
    for response in (openai_shape, ollama_shape):
        assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 20
    assert openai_shape.json()["error"]["code"] == "rate_limit_exceeded"
    assert "too many wrong tokens" in openai_shape.json()["error"]["message"]
    assert "too many wrong tokens" in ollama_shape.json()["error"]


@pytest.mark.service
def test_a_forwarded_for_header_makes_no_new_client_even_from_loopback(strict):
    """X-Forwarded-For is not trusted from 127.0.0.1 either (uvicorn's proxy headers are off): a guesser
    that names a new address per request is still one client, locked out after three wrong tokens."""
    with from_address(strict, "127.0.0.1") as guesser:
        for n, guess in enumerate(("pal_a", "pal_b", "pal_c")):
            headers = {"Authorization": f"Bearer {guess}", "X-Forwarded-For": f"192.0.2.{n + 1}"}
            assert guesser.get("/v1/models", headers=headers).status_code == 401
        again = guesser.get("/v1/models", headers={"Authorization": "Bearer pal_d", "X-Forwarded-For": "192.0.2.9"})
    assert again.status_code == 429
