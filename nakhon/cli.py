"""The ``nakhon`` command: ``agent`` on a device, ``hub`` on the server, ``demo`` on a laptop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path


def _setup_logging() -> None:
    level = os.environ.get("NAKHON_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level != "DEBUG":
        # pymodbus logs every unanswered request with a frame dump; the meter driver reports it more clearly
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"NAKHON_HUB_{name}", default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nakhon", description="Nakhon: the digital municipality's devices and hub.")
    sub = p.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run or check an edge agent").add_subparsers(dest="action", required=True)
    run = agent.add_parser("run", help="run the agent of one device until SIGTERM")
    run.add_argument("config", type=Path, help="the device's TOML file (see firmware-configs/)")
    run.add_argument("--simulate", action="store_true",
                     help="run every driver against its simulator (no hardware needed)")
    check = agent.add_parser("check", help="validate a device config and exit (0 when valid)")
    check.add_argument("config", type=Path)

    hub = sub.add_parser("hub", help="run the hub").add_subparsers(dest="action", required=True)
    serve = hub.add_parser("serve", help="ingest, store and serve the API until SIGTERM")
    serve.add_argument("--data", type=Path, default=Path(_env("DATA", "./nakhon-data/hub") or ""),
                       help="data directory (SQLite store); env NAKHON_HUB_DATA")
    serve.add_argument("--broker-host", default=_env("BROKER_HOST", "127.0.0.1"))
    serve.add_argument("--broker-port", type=int, default=int(_env("BROKER_PORT", "1883") or 1883))
    serve.add_argument("--username", default=_env("USERNAME"), help="broker username of the hub")
    serve.add_argument("--password-file", type=Path, default=_env("PASSWORD_FILE"),
                       help="file holding the hub's broker password")
    serve.add_argument("--root", default=_env("ROOT", "nakhon"), help="topic root of the deployment")
    serve.add_argument("--client-id", default=_env("CLIENT_ID"),
                       help="MQTT client id (stable, so the broker keeps the hub's session); "
                            "default nakhon-hub, or nakhon-hub-GROUP-PID with --share")
    serve.add_argument("--share", default=_env("SHARE"), metavar="GROUP",
                       help="subscribe through $share/GROUP/ so several hub processes split the load")
    serve.add_argument("--max-payload", type=int, default=int(_env("MAX_PAYLOAD", "262144") or 262144),
                       help="larger payloads go to the dead-letter store (bytes)")
    serve.add_argument("--fees", type=Path, default=_env("FEES"),
                       help="fee catalogue TOML (default: the demo catalogue)")
    serve.add_argument("--zones", type=Path, default=_env("ZONES"),
                       help="municipal zones GeoJSON (default: the demo zones of Khon Kaen)")
    serve.add_argument("--promptpay-biller", default=_env("PROMPTPAY_BILLER"),
                       help="registered biller id: QR payments use bill payment (tag 30) with ref1 = the transaction")
    serve.add_argument("--promptpay-target", default=_env("PROMPTPAY_TARGET", "0801234567"),
                       help="PromptPay phone or tax id used when no biller id is set (tag 29)")
    serve.add_argument("--bank-token-file", type=Path, default=_env("BANK_TOKEN_FILE"),
                       help="file with the token the bank's confirmation callback must present")
    serve.add_argument("--rules", type=Path, default=_env("RULES"),
                       help="alarm rules and notification channels TOML (default: the demo rules); see docs/alarms.md")
    serve.add_argument("--http-host", default=_env("HTTP_HOST", "127.0.0.1"))
    serve.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT", "8080") or 8080))

    demo = sub.add_parser("demo", help="run a private broker, the hub and a simulated fleet")
    demo.add_argument("--data", type=Path, default=Path("./nakhon-data/demo"),
                      help="where the demo keeps its broker, hub and outboxes (reused by the next run)")
    demo.add_argument("--http-port", type=int, default=0, help="API port (default: a free one)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nakhon`` console command."""
    args = _parser().parse_args(argv)
    _setup_logging()
    if args.command == "agent":
        return _agent(args)
    if args.command == "hub":
        return _hub(args)
    from nakhon.demo import run_demo

    return run_demo(args.data, args.http_port)


def _agent(args: argparse.Namespace) -> int:
    # a stop that arrives while the agent is still starting ends it cleanly; run_agent then takes over
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from edge import config
    from edge.errors import ConfigError, OutboxError

    try:
        loaded = config.load(args.config)
    except ConfigError as err:
        print(f"nakhon: invalid config\n{err}", file=sys.stderr)
        return 2
    if args.action == "check":
        kinds = ", ".join(f"{c.name} ({k.kind})" for k, c in loaded.drivers) or "none"
        print(f"{args.config}: valid; device {loaded.device.device}, drivers: {kinds}")
        return 0
    from edge.agents.agent import run_agent

    try:
        asyncio.run(run_agent(loaded, simulate=args.simulate))
    except OutboxError as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 1
    return 0


def _hub(args: argparse.Namespace) -> int:
    from hub.errors import HubConfigError
    from hub.finance.promptpay import PromptPaySettings
    from hub.ingest.consumer import IngestSettings
    from hub.serve import HubSettings, serve

    secrets: dict[str, str | None] = {}
    for flag in ("password_file", "bank_token_file"):
        path = getattr(args, flag)
        secrets[flag] = None
        if path:
            try:
                secrets[flag] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as err:
                print(f"nakhon: cannot read --{flag.replace('_', '-')} {path}: {err.strerror}", file=sys.stderr)
                return 2
    password = secrets["password_file"]
    client_id = args.client_id or (f"nakhon-hub-{args.share}-{os.getpid()}" if args.share else "nakhon-hub")
    ingest = IngestSettings(host=args.broker_host, port=args.broker_port, root=args.root, username=args.username,
                            password=password, client_id=client_id, share=args.share,
                            max_payload=args.max_payload)
    extra = {k: v for k, v in (("fees", args.fees), ("zones", args.zones), ("rules", args.rules)) if v}
    settings = HubSettings(data=args.data, ingest=ingest, http_host=args.http_host, http_port=args.http_port,
                           promptpay=PromptPaySettings(biller_id=args.promptpay_biller, target=args.promptpay_target),
                           bank_token=secrets["bank_token_file"], **extra)
    try:
        serve(settings)
    except HubConfigError as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
