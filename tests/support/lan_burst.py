"""Run on a LAN host (tests/image/box/test_network.py): one HTTP connection kept open, then a burst of new
connections to the same port at once; prints how many connected and what the kept one answered before
and after.  Standard library only."""

import http.client
import json
import socket
import sys
import time

box, port, attempts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kept = http.client.HTTPConnection(box, port, timeout=120)
answers = []


def ask() -> None:
    kept.request("GET", "/health")
    answer = kept.getresponse()
    answer.read()
    answers.append(answer.status)


ask()
established = kept.sock

burst = []
for _ in range(attempts):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((box, port))
    burst.append(s)
time.sleep(1.5)
connected = 0
for s in burst:
    try:
        s.getpeername()
        connected += 1
    except OSError:
        pass
    s.close()

ask()
print(json.dumps({"connected": connected, "kept": answers, "same_connection": kept.sock is established}))
