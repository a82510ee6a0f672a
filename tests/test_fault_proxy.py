"""The fault suite's proxy (faults/proxy.py) against a tiny loopback HTTP server: each
fault mode does what it says, the vendor sees exactly the requests the proxy claims it
forwarded, and a seed replays the same faults."""
from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from faults.proxy import FaultPlan, FaultProxy
from tests.support import free_port, wait_for


class Vendor(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the vendors' servers do
    seen: list[str] = []
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes: without this each answer waits for a
        # delayed ACK (~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.lock:
            self.seen.append(body.decode())
        if self.path == "/chunked":
            self.send_response(201)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"ac", b"cepted"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        answer = b"ok:" + body
        self.send_response(201)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def vendor():
    Vendor.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Vendor)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def proxy(vendor):
    with FaultProxy(upstream_port=vendor.server_address[1], port=free_port(), seed=11, hold_seconds=3) as p:
        yield p


def test_passes_requests_through_on_one_kept_alive_connection(proxy):
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        answers = [client.post("/m", content=f"n{i}".encode()) for i in range(20)]
        chunked = client.post("/chunked", content=b"c")
    assert [a.status_code for a in answers] == [201] * 20
    assert [a.text for a in answers] == [f"ok:n{i}" for i in range(20)]
    assert chunked.text == "accepted"
    assert Vendor.seen == [f"n{i}" for i in range(20)] + ["c"]
    # The proxy counts an answer once it has written it, a moment after the client has it.
    wait_for(lambda: proxy.counts()["answered"] == 21, timeout=5, message="the 21st answer counted")
    counts = proxy.counts()
    assert counts["connections"] == 1 and counts["requests"] == counts["forwarded"] == counts["answered"] == 21


def test_429_and_500_are_answered_by_the_proxy_and_never_reach_the_vendor(proxy):
    proxy.queue("429", "500")
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        throttled, failed, fine = (client.post("/m", content=b"x") for _ in range(3))
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"
    assert throttled.json()["code"] == 20429 and throttled.json()["errors"]
    assert failed.status_code == 500
    assert fine.status_code == 201
    assert Vendor.seen == ["x"]
    assert proxy.counts()["429"] == 1 and proxy.counts()["500"] == 1 and proxy.counts()["forwarded"] == 1


def test_close_and_timeout_happen_after_the_vendor_did_the_work(proxy):
    proxy.queue("close", "timeout")
    with httpx.Client(base_url=proxy.url, timeout=httpx.Timeout(5, read=0.5)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/m", content=b"closed")
        with pytest.raises(httpx.ReadTimeout):
            client.post("/m", content=b"timed-out")
        assert client.post("/m", content=b"after").status_code == 201
    # The standard library's client (what the Twilio SDK's requests uses) sees the same.
    proxy.queue("close")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("POST", "/m", body=b"stdlib")
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()
    conn.close()
    assert Vendor.seen == ["closed", "timed-out", "after", "stdlib"]
    wait_for(lambda: proxy.counts()["close"] == 2 and proxy.counts()["answered"] == 1, timeout=5,
             message="the proxy's counts settled")
    counts = proxy.counts()
    assert counts["close"] == 2 and counts["timeout"] == 1 and counts["forwarded"] == 4 and counts["answered"] == 1


def test_refuse_then_pass_again_on_the_same_port(proxy):
    proxy.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    with pytest.raises(httpx.ConnectError):
        httpx.post(proxy.url + "/m", content=b"refused", timeout=2)
    proxy.set_mode("pass")
    assert httpx.post(proxy.url + "/m", content=b"back", timeout=5).status_code == 201
    assert Vendor.seen == ["back"]


def test_hang_accepts_and_never_answers_until_the_mode_changes(proxy):
    proxy.set_mode("hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/m", content=b"hung", timeout=httpx.Timeout(5, read=0.5))
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    held.sendall(b"POST /m HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
    wait_for(lambda: proxy.counts().get("hung") == 2, timeout=5, message="the second connection held")
    proxy.set_mode("pass")
    assert held.recv(100) == b""  # the held connection is closed, unanswered
    held.close()
    assert httpx.post(proxy.url + "/m", content=b"fine", timeout=5).status_code == 201
    assert Vendor.seen == ["fine"]
    assert proxy.counts()["hung"] == 2


def test_a_seed_draws_the_same_faults_at_the_same_rate(vendor):
    outcomes = []
    for _ in range(2):
        Vendor.seen = []
        with FaultProxy(upstream_port=vendor.server_address[1], port=free_port(), seed=5, hold_seconds=0.5) as p:
            p.set_faults(0.2)
            run = []
            with httpx.Client(base_url=p.url, timeout=httpx.Timeout(5, read=0.3)) as client:
                for i in range(200):
                    try:
                        run.append(str(client.post("/m", content=f"{i}".encode()).status_code))
                    except httpx.ReadTimeout:
                        run.append("timeout")
                    except httpx.RemoteProtocolError:
                        run.append("close")
            counts = p.counts()
        outcomes.append(run)
        planned = FaultPlan(5, 0.2).take(200)
        assert run == [{"pass": "201"}.get(k, k) for k in planned]
        # The vendor saw the passed requests and the ambiguous ones, never the 429/500s.
        assert len(Vendor.seen) == counts["forwarded"] == planned.count("pass") + run.count("timeout") + run.count("close")
        assert sum(counts[k] for k in ("429", "500", "timeout", "close")) == 200 - planned.count("pass")
        assert 25 <= 200 - planned.count("pass") <= 55  # ~20 %
    assert outcomes[0] == outcomes[1]
