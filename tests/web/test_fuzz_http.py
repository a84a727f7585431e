"""Raw bytes over a real socket against the real service: no request line, header or body, however
malformed, gets a 5xx, and the service is healthy afterwards (hypothesis, plus OWASP-style cases)."""

import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.web_routes import ROUTE_PATHS

pytestmark = pytest.mark.service

METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"G\xffT"]


def exchange(port: int, raw: bytes) -> int | None:
    """Send `raw`, return the response's status, or None when the box hung up without one (it may, on a
    request that is not HTTP)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            head = s.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            return None
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else None


header_bytes = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
requests = st.builds(
    lambda method, path, suffix, headers, body, auth: (
        method + b" " + path.encode() + suffix + b" HTTP/1.1\r\nHost: box\r\n" + auth
        + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body),
    st.sampled_from(METHODS), st.sampled_from(ROUTE_PATHS), st.binary(max_size=12).filter(lambda b: b" " not in b),
    st.lists(st.tuples(st.sampled_from([b"Content-Type", b"Authorization", b"Accept", b"X-Y", b"Range",
                                        b"Cookie", b"Origin"]), header_bytes), max_size=5),
    st.binary(max_size=300), st.sampled_from([b"", b"Authorization: Bearer TOKEN\r\n"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=requests)
def test_no_raw_request_gets_a_server_error(service, raw):
    status = exchange(service.port, raw.replace(b"TOKEN", service.token.encode()))
    assert status is None or status < 500, raw


CASES = {
    "huge header": b"GET /health HTTP/1.1\r\nHost: box\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    "many headers": b"GET /health HTTP/1.1\r\nHost: box\r\n" + b"X-H: v\r\n" * 3000 + b"\r\n",
    "two lengths": b"POST /v1/models HTTP/1.1\r\nHost: box\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello",
    "length and chunked": b"POST /api/chat HTTP/1.1\r\nHost: box\r\nContent-Length: 4\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "negative length": b"POST /api/chat HTTP/1.1\r\nHost: box\r\nContent-Length: -1\r\n\r\n",
    "absurd length": b"POST /api/chat HTTP/1.1\r\nHost: box\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    "bad chunk size": b"POST /api/chat HTTP/1.1\r\nHost: box\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "latin-1 token": b"GET /v1/models HTTP/1.1\r\nHost: box\r\nAuthorization: Bearer \xff\xfe\xe9\r\n\r\n",
    "bad basic": b"GET /v1/models HTTP/1.1\r\nHost: box\r\nAuthorization: Basic \xff==\r\n\r\n",
    "nul in header": b"GET /health HTTP/1.1\r\nHost: box\r\nX-N: a\x00b\r\n\r\n",
    "no host": b"GET /health HTTP/1.1\r\n\r\n",
    "http/1.0": b"GET /health HTTP/1.0\r\n\r\n",
    "http/0.9": b"GET /health\r\n\r\n",
    "bytes in path": b"GET /conversations/\xff%00%ZZ HTTP/1.1\r\nHost: box\r\n\r\n",
    "path traversal": b"GET /static/../../../../etc/passwd HTTP/1.1\r\nHost: box\r\n\r\n",
    "absolute uri": b"GET http://evil.example/health HTTP/1.1\r\nHost: box\r\n\r\n",
    "not http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
}


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_owasp_style_header_cases(service, raw):
    status = exchange(service.port, raw)
    assert status is None or status < 500, status


def test_the_service_is_healthy_after_the_fuzzing(service):
    with service.client() as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3}).status_code == 200
