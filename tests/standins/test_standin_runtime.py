"""Running the stand-ins (StandinServers, python -m standins), their packaged contracts,
and the SDK factories' base-URL redirection."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from importlib import resources

import httpx
import pytest
from jsonschema import Draft202012Validator

from lead_orchestrator.messaging.sdk_clients import RedirectingTwilioHttpClient, make_sendgrid_client
from standins.contracts import load_schema
from standins.servers import StandinServers
from standins.sms_segments import count_segments
from standins.twilio_state import TwilioError, TwilioState


def test_servers_start_on_free_ports_and_stop():
    with StandinServers() as s:
        urls = [s.shopmonkey_url, s.twilio_url, s.sendgrid_url]
        assert len(set(urls)) == 3 and all(u.startswith("http://127.0.0.1:") for u in urls)
        assert all(httpx.get(f"{u}/_outbox.json", trust_env=False).status_code == 200 for u in urls)
    port = int(urls[0].rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_busy_port_fails_start_at_once():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            StandinServers(twilio_port=busy.getsockname()[1]).start()


def test_python_dash_m_standins_runs_until_interrupted():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "standins", "--shopmonkey-port", "0", "--twilio-port", "0", "--sendgrid-port", "0",
         "--shop-key", "demo-key"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:  # returns at "Ctrl-C stops." or when the process dies
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        urls = dict(re.findall(r"^(\w+)\s+(http://\S+)", "".join(lines), re.M))
        assert set(urls) == {"ShopMonkey", "Twilio", "SendGrid"}, lines
        r = httpx.get(f"{urls['ShopMonkey']}/v3/workflow_status", headers={"Authorization": "Bearer demo-key"})
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.stdout.close()


@pytest.mark.parametrize("name", ["twilio_create_message", "sendgrid_mail_send"])
def test_contract_schemas_ship_in_the_package_and_are_valid_2020_12(name):
    assert resources.files("standins.contracts").joinpath(f"{name}.schema.json").is_file()
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_segment_counting():
    assert [count_segments(b) for b in ("", "a" * 160, "a" * 161, "€" * 80, "€" * 81, "é" * 160, "ñ👍")] == [1, 1, 2, 1, 2, 1, 1]
    assert count_segments("ą" * 70) == 1 and count_segments("ą" * 71) == 2


def test_twilio_without_registered_accounts_checks_only_the_username():
    state = TwilioState()
    sid = "AC" + "1" * 32
    assert state.authenticate(sid, sid, "any-token").sid == sid
    with pytest.raises(TwilioError):
        state.authenticate(sid, "AC" + "2" * 32, "any-token")
    state.close()


def test_twilio_client_redirect_keeps_path_and_query(monkeypatch):
    seen = []
    monkeypatch.setattr("twilio.http.http_client.TwilioHttpClient.request",
                        lambda self, method, url, *a, **k: seen.append(url))
    client = RedirectingTwilioHttpClient("http://127.0.0.1:9/prefix/")
    client.request("GET", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?PageSize=5")
    assert seen == ["http://127.0.0.1:9/prefix/2010-04-01/Accounts/AC1/Messages.json?PageSize=5"]
    assert client.timeout == 10.0
    with pytest.raises(ValueError):
        RedirectingTwilioHttpClient("127.0.0.1:9")


def test_sendgrid_client_host_and_timeout():
    client = make_sendgrid_client("SG.x", "http://127.0.0.1:9/", timeout=3)
    assert client.host == "http://127.0.0.1:9" and client.client.mail.send.timeout == 3
