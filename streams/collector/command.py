"""`tally collect`: serve the HTTP collector (streams/collector/server.py) until Ctrl-C."""
from __future__ import annotations

import os
import sys

DEFAULT_PORT = 8090
KEYS_ENV = "TALLY_COLLECT_KEYS"


def cmd_collect(args) -> int:
    from aiohttp import web

    from streams.cli import settings_from_args
    from streams.collector.keys import KeysError, load_keys
    from streams.collector.server import Publisher, RateLimit, make_app

    settings = settings_from_args(args)
    path = args.keys or os.environ.get(KEYS_ENV)
    if not path:
        print(f"error: the collector needs its keys file (write key / api key -> app): --keys FILE or {KEYS_ENV}",
              file=sys.stderr)
        return 2
    try:
        keys = load_keys(path)
    except KeysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    publisher = Publisher(settings.bootstrap, settings.topics.user_actions, settings.topics.user_profiles)
    app = make_app(publisher, keys, RateLimit(args.rate_limit))
    print(f"collector: http://{args.host}:{args.port}/ -> Kafka {settings.bootstrap} {settings.topics.user_actions} "
          f"({len(keys.apps)} keys; Ctrl-C to stop)", flush=True)
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=True)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another with --port",
              file=sys.stderr)
        return 2
    return 0


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args

    collect = subparsers.add_parser(
        "collect", help="HTTP collector: Segment/RudderStack, Amplitude and PostHog SDKs -> Kafka",
        description="Takes what the tools' analytics SDKs send (Segment /v1/*, Amplitude /2/httpapi, PostHog "
                    "/batch/) and publishes it to Kafka; answers 200 once Kafka acknowledged.")
    collect.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    collect.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 behind a load balancer)")
    collect.add_argument("--keys", help=f"YAML file: keys: {{write key: app}}, origins: [...] (env {KEYS_ENV})")
    collect.add_argument("--rate-limit", type=float, default=0.0, help="events/s per key (default 0: no limit)")
    add_settings_args(collect)
    collect.set_defaults(func=cmd_collect)
