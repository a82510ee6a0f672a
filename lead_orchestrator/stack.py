"""`lead-orchestrator up`: the whole stack in one command.

Starts (or attaches to) the database and applies the schema; when no real vendor
accounts are configured, starts the local stand-ins and a demo shop wired to them;
then the webhook receiver, the Dagster webserver and the Dagster daemon as child
processes. Ctrl-C (or SIGTERM) stops every process it started.
"""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from lead_orchestrator.database_setup import database_url_for
from lead_orchestrator.db import libpq_url, sqlalchemy_psycopg2_url
from lead_orchestrator.migrations import apply_migrations
from lead_orchestrator.settings import Settings
from lead_orchestrator.shops import ShopChanges, create_shop, get_shop, list_shops, update_shop

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_SLUG = "demo"
STANDIN_PORTS = {"shopmonkey": 8701, "twilio": 8702, "sendgrid": 8703}
# With the stand-ins, replies are received for this made-up domain unless INBOUND_PARSE_DOMAIN says otherwise.
DEMO_PARSE_DOMAIN = "reply.demo-auto.example"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


@dataclass
class Children:
    """Child processes, each in its own process group so Ctrl-C reaches all of them."""

    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop_all(self, timeout: float = 15.0) -> None:
        stop_process_groups(list(self.procs.values()), timeout)


def stop_process_groups(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM to each child's process group (children started with start_new_session),
    up to `timeout` for the children to exit, then SIGKILL to whatever is left of each
    group: a Dagster daemon's code server ignores SIGTERM and outlived its daemon (we
    found them orphaned, 150 MB each, after test and benchmark runs)."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group outlives its leader while members remain
    except ProcessLookupError:
        pass


def wait_http(url: str, *, timeout: float, children: Children, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name in children.dead():
            raise RuntimeError(f"{name} exited at start:\n{children.log_tail(name)}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer at {url} within {timeout:.0f}s:\n{children.log_tail(name)}")


def prepare_dagster_home(settings: Settings) -> Path:
    home = (settings.dagster_home or settings.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def dagster_storage_url(database_url: str, embedded) -> str:
    # Embedded: Dagster keeps its own database in the same cluster. External: the same database.
    url = embedded.url("dagster") if embedded else database_url
    return sqlalchemy_psycopg2_url(url)


def ensure_demo_shop(database_url: str) -> dict:
    """The demo shop and the credentials the stand-ins will accept for it."""
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        shop = get_shop(conn, DEMO_SLUG)
        if shop is None:
            shop = create_shop(conn, DEMO_SLUG, "Demo Auto Repair", ShopChanges(
                time_zone="America/Chicago", shop_phone="+15125550199",
                postal_address="100 Congress Ave, Austin, TX 78701",
                shopmonkey_api_key="demo-" + secrets.token_hex(12),
                webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
                twilio_account_sid="AC" + secrets.token_hex(16), twilio_auth_token=secrets.token_hex(16),
                twilio_sender="+15125550100", sendgrid_api_key="SG." + secrets.token_urlsafe(24),
                sendgrid_sender="service@demo-auto.example",
                # Demo: answer at any hour, so the first touch is visible at once.
                send_window_start="00:00", send_window_end="23:59:59", settings={"holiday_country": None},
            ))
    return {"shop": shop, "sm_key": shop.shopmonkey_api_key.get_secret_value(),
            "secret": shop.webhook_secret.get_secret_value()}


def register_with_standins(demo: dict, urls: dict[str, str], receiver_url: str) -> None:
    shop = demo["shop"]
    httpx.post(f"{urls['shopmonkey']}/_standin/shops", timeout=5, json={
        "api_key": demo["sm_key"], "webhook_secret": demo["secret"],
        "webhook_url": f"{receiver_url}/webhooks/shopmonkey/{shop.slug}"}).raise_for_status()
    httpx.post(f"{urls['twilio']}/_standin/accounts", timeout=5, json={
        "account_sid": shop.twilio_account_sid, "auth_token": shop.twilio_auth_token.get_secret_value(),
        "numbers": [shop.twilio_sender]}).raise_for_status()
    httpx.post(f"{urls['sendgrid']}/_standin/keys", timeout=5,
               json={"api_key": shop.sendgrid_api_key.get_secret_value()}).raise_for_status()


def connect_demo_email_events(database_url: str, urls: dict[str, str], receiver_url: str) -> None:
    """SendGrid stand-in events (delivered, bounce, ...) go to the demo shop's event
    webhook, verified with the stand-in's signing key (a new one at every start)."""
    key = httpx.get(f"{urls['sendgrid']}/_standin/event-webhook-public-key", timeout=5).json()["public_key"]
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        update_shop(conn, DEMO_SLUG, ShopChanges(sendgrid_event_public_key=key))
    httpx.post(f"{urls['sendgrid']}/_standin/event-webhook", timeout=5,
               json={"url": f"{receiver_url}/webhooks/sendgrid/{DEMO_SLUG}/events"}).raise_for_status()


def connect_demo_replies(urls: dict[str, str], receiver_url: str, domain: str) -> None:
    """The SendGrid stand-in posts mail for the demo parse domain to the receiver, as
    SendGrid Inbound Parse would (docs/replies.md)."""
    from lead_orchestrator.email_replies import INBOUND_PARSE_PATH

    httpx.post(f"{urls['sendgrid']}/_standin/inbound-parse", timeout=5,
               json={"hostname": domain, "url": receiver_url + INBOUND_PARSE_PATH}).raise_for_status()


def say_email_replies(settings: Settings, domain: str | None) -> None:
    """Once at start: whether customers' email replies reach us and stop their follow-ups."""
    if domain:
        say(f"email replies: Reply-To reply+<lead token>@{domain}; SendGrid Inbound Parse for {domain} must post "
            f"to {settings.public_base_url.rstrip('/')}/webhooks/sendgrid-inbound/parse")
    else:
        say("email replies: INBOUND_PARSE_DOMAIN is unset, so emails carry no reply address: a customer's email "
            "reply goes to the shop's sender address and does not stop the follow-ups (docs/replies.md)")


def create_demo_estimate(demo: dict, urls: dict[str, str]) -> str:
    response = httpx.post(f"{urls['shopmonkey']}/_standin/orders", timeout=10, json={
        "api_key": demo["sm_key"],
        "customer": {"firstName": "Dana", "lastName": "Lopez"},
    })
    response.raise_for_status()
    return response.json()["order"]["id"]


def wait_for_first_touch(urls: dict[str, str], since: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    got: dict[str, float] = {}
    while time.monotonic() < deadline and len(got) < 2:
        for name in ("twilio", "sendgrid"):
            if name not in got:
                try:
                    if httpx.get(f"{urls[name]}/_outbox.json", timeout=2).json():  # what the vendor accepted
                        got[name] = time.monotonic() - since
                except (httpx.HTTPError, ValueError):
                    pass
        time.sleep(0.25)
    for name, label in (("twilio", "SMS"), ("sendgrid", "email")):
        if name in got:
            say(f"demo {label} reached the {name} stand-in {got[name]:.1f}s after the estimate was created")
        else:
            say(f"no demo {label} yet after {timeout:.0f}s: see {urls[name]}/_outbox and the Dagster UI runs")


def run_stack(settings: Settings, *, real_vendors: bool = False, demo: bool = True) -> int:
    children = Children(settings.data_dir.resolve() / "logs")
    stopping = {"flag": False}

    def on_signal(*_):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    say("starting the database" + (" (embedded PostgreSQL)" if not settings.database_url else ""))
    with database_url_for(settings, keep_running=True) as (database_url, embedded):
        try:
            if settings.database_url and settings.lead_encryption_key is None:
                say(f"warning: LEAD_ENCRYPTION_KEY is unset; shop secrets are encrypted with the key in "
                    f"{settings.encryption_key_file}: every host must use the same key (see docs/security.md)")
            applied = apply_migrations(database_url)
            say(f"schema: {len(applied)} migration(s) applied" if applied else "schema is up to date")
            with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
                real_shops = [s.slug for s in list_shops(conn) if s.slug != DEMO_SLUG]
            use_standins = not real_vendors and not real_shops
            receiver_url = f"http://{settings.receiver_host}:{settings.receiver_port}"
            env = {**os.environ, "DATABASE_URL": libpq_url(database_url),
                   "DAGSTER_HOME": str(prepare_dagster_home(settings)),
                   "DAGSTER_PG_URL": dagster_storage_url(database_url, embedded),
                   "PUBLIC_BASE_URL": settings.public_base_url, "APP_SECRET_KEY": settings.secret_key(),
                   # Every child decrypts shop secrets with the same key(s) as this process.
                   "LEAD_ENCRYPTION_KEY": ",".join(settings.encryption_keys()),
                   "SHOPMONKEY_BASE_URL": settings.shopmonkey_base_url,
                   "TWILIO_API_BASE_URL": settings.twilio_api_base_url,
                   "SENDGRID_API_BASE_URL": settings.sendgrid_api_base_url}
            urls: dict[str, str] = {}
            bin_dir = Path(sys.executable).parent
            if use_standins:
                say("no real shops configured: starting local stand-ins for ShopMonkey, Twilio and SendGrid")
                urls = {name: f"http://127.0.0.1:{port}" for name, port in STANDIN_PORTS.items()}
                children.start("standins", [sys.executable, "-m", "standins"], env)
                for name, url in urls.items():
                    wait_http(f"{url}/_outbox.json" if name != "shopmonkey" else f"{url}/_standin/requests",
                              timeout=30, children=children, name="standins")
                env.update(SHOPMONKEY_BASE_URL=urls["shopmonkey"], TWILIO_API_BASE_URL=urls["twilio"],
                           SENDGRID_API_BASE_URL=urls["sendgrid"])
                demo_shop = ensure_demo_shop(database_url)
                register_with_standins(demo_shop, urls, receiver_url)
                connect_demo_email_events(database_url, urls, receiver_url)
                reply_domain = settings.inbound_parse_domain or DEMO_PARSE_DOMAIN
                connect_demo_replies(urls, receiver_url, reply_domain)
            else:
                say(f"real vendors: shops {', '.join(real_shops) or '(none yet)'}")
                reply_domain = settings.inbound_parse_domain
            if reply_domain:
                env["INBOUND_PARSE_DOMAIN"] = reply_domain
            say_email_replies(settings, reply_domain)

            say("starting the webhook receiver, the dispatcher, Dagster webserver and Dagster daemon")
            children.start("receiver", [sys.executable, "-m", "uvicorn", "webhook_receiver.main:create_app",
                                        "--factory", "--host", settings.receiver_host,
                                        "--port", str(settings.receiver_port)], env)
            children.start("dispatcher", [str(bin_dir / "lead-orchestrator"), "dispatcher"], env)
            children.start("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], env)
            children.start("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml",
                                                 "-h", "127.0.0.1", "-p", str(settings.dagster_port)], env)
            wait_http(f"{receiver_url}/readyz", timeout=60, children=children, name="receiver")
            dagster_url = f"http://127.0.0.1:{settings.dagster_port}"
            wait_http(f"{dagster_url}/server_info", timeout=120, children=children, name="dagster-webserver")

            print()
            print(f"  Dagster UI           {dagster_url}")
            print(f"  Webhook receiver     {receiver_url}   (POST /webhooks/shopmonkey/<shop>, GET /readyz, /metrics)")
            for name, url in urls.items():
                print(f"  {name + ' stand-in':<20} {url}   outbox {url}/_outbox  (JSON: {url}/_outbox.json)")
            print(f"  Logs                 {children.log_dir}")
            print()
            if use_standins and demo:
                started = time.monotonic()
                order_id = create_demo_estimate(demo_shop, urls)
                say(f"created demo estimate {order_id} in the ShopMonkey stand-in; it sends a signed webhook")
                wait_for_first_touch(urls, started)
                say(f"answer the demo email as the customer: curl -X POST {urls['sendgrid']}/_standin/inbound/reply "
                    """-H 'Content-Type: application/json' -d '{"text": "Yes, book it"}'  (then: """
                    f"./dev cli why {DEMO_SLUG} {order_id})")
            say("running; Ctrl-C stops everything")
            while not stopping["flag"]:
                dead = children.dead()
                if dead:
                    say(f"{dead[0]} stopped unexpectedly; last lines of its log:\n{children.log_tail(dead[0])}")
                    return 1
                time.sleep(0.5)
            return 0
        except RuntimeError as exc:
            say(f"could not start: {exc}")
            return 1
        finally:
            say("stopping")
            children.stop_all()
            if embedded is not None:
                embedded.stop(only_if_started_here=True)
