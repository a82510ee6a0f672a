"""`python -m standins`: run the vendor stand-ins in the foreground until Ctrl-C (Tekmetric
only when --tekmetric-port is given)."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from standins.servers import DEFAULT_PORTS, TEKMETRIC_PORT, StandinServers


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m standins", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    for name, port in DEFAULT_PORTS.items():
        p.add_argument(f"--{name}-port", type=int, default=port, help=f"default {port}; 0 picks a free port")
    p.add_argument("--shop-key", action="append", default=[], help="register a ShopMonkey shop with this API key")
    p.add_argument("--webhook-url", help="where the registered shops' webhooks go")
    p.add_argument("--webhook-secret", help="whsec_<base64> secret for those webhooks (generated if omitted)")
    p.add_argument("--twilio-account", action="append", default=[], metavar="SID:TOKEN",
                   help="register a Twilio account; then its token is required")
    p.add_argument("--sendgrid-key", action="append", default=[], help="register a SendGrid API key; then it is required")
    p.add_argument("--tekmetric-port", type=int, default=None,
                   help=f"start the Tekmetric stand-in on this port (e.g. {TEKMETRIC_PORT}; 0 picks a free port)")
    p.add_argument("--tekmetric-app", action="append", default=[], metavar="CLIENT_ID:SECRET",
                   help="register a Tekmetric partner app")
    p.add_argument("--tekmetric-shop", action="append", default=[], type=int, metavar="SHOP_ID",
                   help="register a Tekmetric shop connected to every registered partner app")
    p.add_argument("--tekmetric-webhook-url", help="where those shops' webhooks go (with its ?token=...)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    servers = StandinServers(args.host, args.shopmonkey_port, args.twilio_port, args.sendgrid_port,
                             log_level="info", access_log=True, tekmetric_port=args.tekmetric_port)
    for key in args.shop_key:
        shop = servers.shopmonkey.add_shop(key, args.webhook_url, args.webhook_secret)
        print(f"shop {key}: webhook {shop.webhook_url or '-'} secret {shop.webhook_secret or '-'}")
    for pair in args.twilio_account:
        sid, _, token = pair.partition(":")
        servers.twilio.add_account(sid, token)
    for key in args.sendgrid_key:
        servers.sendgrid.add_api_key(key)
    for pair in args.tekmetric_app:
        client_id, _, secret = pair.partition(":")
        servers.tekmetric.add_app(client_id, secret)
    for shop_id in args.tekmetric_shop:
        servers.tekmetric.add_shop(shop_id, webhook_url=args.tekmetric_webhook_url)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    servers.start()
    try:
        named = [("ShopMonkey", servers.shopmonkey_url), ("Twilio", servers.twilio_url),
                 ("SendGrid", servers.sendgrid_url)]
        if args.tekmetric_port is not None:
            named.append(("Tekmetric", servers.tekmetric_url))
        for name, url in named:
            print(f"{name:<10} {url}   outbox {url}/_outbox   docs {url}/docs")
        print("Ctrl-C stops.", flush=True)
        stop.wait()
    finally:
        servers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
