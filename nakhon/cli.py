"""The ``nakhon`` command: ``agent`` on a device, ``hub`` on the server, ``demo`` on a laptop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub import config as hub_config


def _setup_logging() -> None:
    level = os.environ.get("NAKHON_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level != "DEBUG":
        # pymodbus logs every unanswered request with a frame dump; the meter driver reports it more clearly
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"NAKHON_HUB_{name}", default)


def _parser(accounts: bool = True, provisioning: bool = True) -> argparse.ArgumentParser:
    """The command line; without ``accounts`` (``nakhon agent ...``) the hub's account commands are left out, so
    that an agent does not import the hub's store and password hashing (memory and start-up time on a Pi), and
    without ``provisioning`` (``nakhon agent run``) the provisioning and enrollment commands (the hub's client)."""
    p = argparse.ArgumentParser(prog="nakhon", description="Nakhon: the digital municipality's devices and hub.")
    sub = p.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run or check an edge agent").add_subparsers(dest="action", required=True)
    run = agent.add_parser("run", help="run the agent of one device until SIGTERM")
    run.add_argument("config", type=Path, help="the device's TOML file (see firmware-configs/)")
    run.add_argument("--simulate", action="store_true",
                     help="run every driver against its simulator (no hardware needed)")
    check = agent.add_parser("check", help="validate a device config and exit (0 when valid)")
    check.add_argument("config", type=Path)
    check.add_argument("--connect", action="store_true",
                       help="also check files, devices, one reading per sensor, the broker (DNS, TCP, TLS, login, "
                            "a publish) and the clock; one line per step (docs/technicians.md)")
    check.add_argument("--simulate", action="store_true", help="with --connect: run drivers on their simulators")
    check.add_argument("--user", help="with --connect: the service user whose permissions the file checks use "
                                      "(default: nakhon when run as root, else you)")
    if provisioning:
        from nakhon import provision as provision_cli

        provision_cli.add_enroll_parser(agent)

    hub = sub.add_parser("hub", help="run the hub").add_subparsers(dest="action", required=True)
    # every serve flag defaults to "not given", so that only the flags on the command line override the
    # config file and the NAKHON_HUB_* environment (hub/config.py holds the defaults)
    serve = hub.add_parser("serve", help="ingest, store and serve the API until SIGTERM",
                           argument_default=argparse.SUPPRESS,
                           epilog="Every flag is also a key of the config file and a NAKHON_HUB_<KEY> variable "
                                  "(hub/hub.example.toml, docs/configuration.md).")
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="hub.toml with the hub's settings; env NAKHON_HUB_CONFIG")
    serve.add_argument("--data", type=Path, help="data directory (SQLite store); env NAKHON_HUB_DATA")
    serve.add_argument("--broker-host")
    serve.add_argument("--broker-port", type=int)
    serve.add_argument("--username", help="broker username of the hub")
    serve.add_argument("--password-file", type=Path, help="file holding the hub's broker password")
    serve.add_argument("--root", help="topic root of the deployment")
    serve.add_argument("--client-id", help="MQTT client id (stable, so the broker keeps the hub's session); "
                                           "default nakhon-hub, or nakhon-hub-GROUP-PID with --share")
    serve.add_argument("--share", metavar="GROUP",
                       help="subscribe through $share/GROUP/ so several hub processes split the load")
    serve.add_argument("--max-payload", type=int, help="larger payloads go to the dead-letter store (bytes)")
    serve.add_argument("--max-clock-skew", type=float, metavar="SECONDS",
                       help="timestamps further ahead of the hub's clock are dead-lettered as clock_skew")
    serve.add_argument("--max-age", type=float, metavar="SECONDS", help="timestamps further behind the hub's clock "
                                                                        "are dead-lettered as clock_skew (366 days)")
    serve.add_argument("--max-unwritten", type=float, metavar="SECONDS",
                       help="/healthz answers 503 while a message waits longer to be stored")
    serve.add_argument("--ack-window", type=float, metavar="SECONDS", help="committed seqs wait at most this long "
                                                                           "to share one down/ack per device (0: one "
                                                                           "ack per commit)")
    serve.add_argument("--fees", type=Path, help="fee catalogue TOML (default: the demo catalogue)")
    serve.add_argument("--zones", type=Path, help="municipal zones GeoJSON (default: the demo zones of Khon Kaen)")
    serve.add_argument("--promptpay-biller",
                       help="registered biller id: QR payments use bill payment (tag 30) with ref1 = the transaction")
    serve.add_argument("--promptpay-target", help="PromptPay phone or tax id used when no biller id is set (tag 29); "
                                                  "without either, PromptPay is off")
    serve.add_argument("--promptpay-expiry-min", type=float,
                       help="minutes a QR payment waits for the bank before it expires (default 15)")
    serve.add_argument("--promptpay-demo", action="store_true",
                       help="demo only: QR codes to a target that is no account, labelled as a demo")
    serve.add_argument("--bank-secret-file", type=Path,
                       help="file with the secret the bank signs its confirmation callbacks with (docs/finance.md)")
    serve.add_argument("--public-ogc", action="store_true", help="serve the GIS layers (/ogc) without sign-in")
    serve.add_argument("--tiles", help="tile URL template for the dashboard map's basemap, e.g. https://tiles."
                                       "example.go.th/{z}/{x}/{y}.png (default: none, a plain background)")
    serve.add_argument("--pmtiles", type=Path,
                       help="a local vector (MVT) .pmtiles file for the dashboard map's basemap, e.g. the "
                            "city's extract (docs/dashboard.md); env NAKHON_HUB_PMTILES")
    serve.add_argument("--deployment", type=Path,
                       help="a provisioned deployment (nakhon provision init): HTTPS, CSR signing, and the "
                            "registry enforced; env NAKHON_HUB_DEPLOYMENT")
    serve.add_argument("--plain-http", action="store_true",
                       help="with --deployment, serve the API over plain HTTP on a loopback --http-host (the demo's "
                            "browser pages; devices still use mutual TLS to the broker)")
    serve.add_argument("--registry", choices=("open", "enforce"),
                       help="enforce: dead-letter as unregistered what devices that are not active send "
                            "(default: enforce with --deployment, else open)")
    serve.add_argument("--rules", type=Path,
                       help="alarm rules and notification channels TOML (default: the demo rules); see docs/alarms.md")
    serve.add_argument("--http-host")
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--records", metavar="URL",
                       help="records store: sqlite:///PATH (default: hub.sqlite in --data) or postgresql://USER@HOST/DB")
    serve.add_argument("--timeseries", metavar="URL",
                       help="time-series store: sqlite (default) or victoriametrics+http://HOST:PORT")
    config = hub.add_parser("config", help="print the hub's effective settings (file < environment), secrets as ***")
    config.add_argument("--config", type=Path, metavar="FILE", help="hub.toml; env NAKHON_HUB_CONFIG")
    config.add_argument("--check", action="store_true",
                        help="also read the secret files (private, not empty); exit 2 on any problem")

    if accounts:
        from hub.auth import admin

        admin.add_parsers(hub, _env("DATA", "./nakhon-data/hub") or "")

    purge = hub.add_parser("purge", help="strip personal data from records older than the retention period")
    purge.add_argument("--data", type=Path, default=Path(_env("DATA", "./nakhon-data/hub") or ""),
                       help="data directory (SQLite store); env NAKHON_HUB_DATA")
    purge.add_argument("--retention-days", type=float, default=float(_env("RETENTION_DAYS", "365") or 365),
                       help="keep personal fields this many days (default 365); env NAKHON_HUB_RETENTION_DAYS")
    purge.add_argument("--dry-run", action="store_true", help="count what would be stripped, change nothing")
    migrate = hub.add_parser("migrate", help="apply the records store's pending schema migrations and exit")
    migrate.add_argument("--data", type=Path, default=Path(_env("DATA", "./nakhon-data/hub") or ""),
                         help="data directory (SQLite store); env NAKHON_HUB_DATA")
    _store_flags(migrate, timeseries=False)

    move = hub.add_parser("migrate-store", help="copy an embedded deployment's records from SQLite to an empty "
                                                "PostgreSQL database, with a count per table at the end")
    move.add_argument("--from", dest="from_url", required=True, help="sqlite:///PATH of the hub.sqlite file")
    move.add_argument("--to", dest="to_url", required=True,
                      help="postgresql://USER@HOST:PORT/DB (?password_file=PATH, or --password-file)")
    move.add_argument("--password-file", type=Path, help="file holding the PostgreSQL password")
    move.add_argument("--timeseries", metavar="URL", help="also copy the file's readings to this time-series store "
                      "(sqlite:///PATH or victoriametrics+http://HOST:PORT)")

    if provisioning:
        provision_cli.add_parsers(sub)

    demo = sub.add_parser("demo", help="run a private broker, the hub and a simulated fleet")
    demo.add_argument("--data", type=Path, default=Path("./nakhon-data/demo"),
                      help="where the demo keeps its broker, hub and outboxes (reused by the next run)")
    demo.add_argument("--hub-port", "--http-port", dest="hub_port", type=int, default=8080,
                      help="the hub's API port (8080; 0: any free port)")
    demo.add_argument("--kiosk-port", type=int, default=8088, help="the kiosk screen's port (8088; 0: any free port)")
    return p


def _store_flags(parser: argparse.ArgumentParser, timeseries: bool = True) -> None:
    """``--records URL`` (and ``--timeseries URL``): the stores of :mod:`hub.backends`."""
    parser.add_argument("--records", default=_env("RECORDS"), metavar="URL",
                        help="records store: sqlite:///PATH (default <data>/hub.sqlite) or postgresql://...; "
                             "env NAKHON_HUB_RECORDS")
    if timeseries:
        parser.add_argument("--timeseries", default=_env("TIMESERIES"), metavar="URL",
                            help="time-series store: sqlite (default: the records file), sqlite:///PATH or "
                                 "victoriametrics+http://HOST:PORT; env NAKHON_HUB_TIMESERIES")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nakhon`` console command."""
    words = sys.argv[1:] if argv is None else argv
    args = _parser(accounts=words[:1] != ["agent"], provisioning=words[:2] != ["agent", "run"]).parse_args(argv)
    _setup_logging()
    if args.command == "agent":
        return _agent(args)
    if args.command == "hub":
        return _hub(args)
    if args.command == "provision":
        from nakhon import provision as provision_cli

        return provision_cli.run(args)
    from nakhon.demo import run_demo

    return run_demo(args.data, args.hub_port, args.kiosk_port)


def _agent(args: argparse.Namespace) -> int:
    # a stop that arrives while the agent is still starting ends it cleanly; run_agent then takes over
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.action == "enroll":
        from nakhon import provision as provision_cli

        return provision_cli.run_enroll(args)
    # pydantic looks for plugins (every installed package's entry points) when it builds the first model; a device
    # has none, and the scan leaves memory behind for the agent's lifetime. Set before edge.config builds its models.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from edge import config
    from edge.errors import ConfigError, OutboxError

    if args.action == "check" and not args.connect and (args.simulate or args.user):
        print("nakhon: --simulate and --user go with --connect", file=sys.stderr)
        return 2
    if args.action == "check" and args.connect:
        from edge.agents import check

        return check.main(args.config, args.simulate, args.user)
    try:
        loaded = config.load(args.config, check_files=args.action == "check")
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


def _purge(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from hub import audit
    from hub.errors import StoreError
    from hub.records.session import Session
    from hub.retention import purge
    from hub.store.sqlite import SQLiteStore

    if not 0 <= args.retention_days <= 36_500:
        print(f"nakhon: --retention-days must be 0 to 36500, not {args.retention_days:g}", file=sys.stderr)
        return 2
    path = args.data / "hub.sqlite"
    if not path.exists():
        print(f"nakhon: no hub store at {path}", file=sys.stderr)
        return 2
    older_than = datetime.now(UTC) - timedelta(days=args.retention_days)
    store = SQLiteStore(path)

    def work(db: Session) -> dict[str, int]:
        removed = purge(db, older_than, args.dry_run)
        if not args.dry_run:
            audit.AuditLog(store).record(audit.CLI, "data.purge", "store", None,
                                         {"older_than": older_than.isoformat(), "stripped": removed}, db=db)
        return removed

    try:
        store.open()
        removed = store.write(work)
    except StoreError as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    verb = "would strip" if args.dry_run else "stripped"
    print(f"personal fields of records older than {older_than:%Y-%m-%d %H:%M} UTC ({args.retention_days:g} days):")
    for field, count in removed.items():
        print(f"  {field:<28} {verb} from {count} rows")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from hub.backends import open_backends
    from hub.errors import HubConfigError, StoreError
    from hub.records.migrate import describe

    try:
        # only the records store is opened; a records URL other than SQLite needs a time-series URL beside it,
        # and any will do for a store that is built but never opened
        series = None if args.records is None or args.records.startswith("sqlite:") else "sqlite:///unused"
        store = open_backends(args.records, series, args.data).records
    except HubConfigError as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 2
    try:
        store.open()
    except StoreError as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print("\n".join(describe(store.applied)))
    return 0


def _hub(args: argparse.Namespace) -> int:
    from hub.auth import admin

    if args.action in admin.ACTIONS:
        return admin.run(args)
    if args.action == "purge":
        return _purge(args)
    if args.action == "migrate":
        return _migrate(args)
    if args.action == "migrate-store":
        from hub.records import transfer

        return transfer.run(args.from_url, args.to_url, args.password_file, args.timeseries)
    from hub import config
    from hub.errors import HubConfigError

    path = config.config_path(getattr(args, "config", None), os.environ)
    flags = {k: v for k, v in vars(args).items() if k in config.HubSettings.model_fields}
    try:
        settings = config.load(path, os.environ, flags)
        reading = args.action == "serve" or args.check
        secrets = config.read_secrets(settings, path, os.environ, flags) if reading else None
    except HubConfigError as err:
        print(f"nakhon: invalid hub settings\n{err}", file=sys.stderr)
        return 2
    if args.action == "config":
        print(f"# nakhon hub: effective settings ({path or 'no config file'}, then NAKHON_HUB_*)")
        print(config.render(settings, secrets), end="")
        return 0
    assert secrets is not None
    return _serve(settings, secrets)


def _serve(settings: hub_config.HubSettings, secrets: hub_config.HubSecrets) -> int:
    from dataclasses import replace

    from hub.errors import HubConfigError
    from hub.finance.promptpay import PromptPaySettings
    from hub.ingest.classify import ClockWindow
    from hub.ingest.consumer import IngestSettings
    from hub.serve import HubSettings, serve

    password = secrets.password
    username, broker_port = settings.username, settings.broker_port
    if settings.deployment is not None and username is None:
        from hub.provision import deployment

        try:
            chosen, paths = deployment.load(settings.deployment)
            password = paths.hub_password.read_text(encoding="utf-8").strip()
        except (HubConfigError, OSError) as err:
            print(f"nakhon: --deployment {settings.deployment}: {err}", file=sys.stderr)
            return 2
        username, broker_port = deployment.HUB_USER, chosen.hub_port
    share = settings.share
    client_id = settings.client_id or (f"nakhon-hub-{share}-{os.getpid()}" if share else "nakhon-hub")
    ingest = IngestSettings(host=settings.broker_host, port=broker_port, root=settings.root, username=username,
                            password=password, client_id=client_id, share=share,
                            max_payload=settings.max_payload,
                            window=ClockWindow(ahead_s=settings.max_clock_skew, behind_s=settings.max_age),
                            max_unwritten_s=settings.max_unwritten, ack_window_s=settings.ack_window)
    extra: dict[str, Any] = {k: v for k, v in (("fees", settings.fees), ("zones", settings.zones),
                                               ("rules", settings.rules), ("tiles", settings.tiles),
                                               ("pmtiles", settings.pmtiles)) if v}
    try:
        serving = HubSettings(data=settings.data, ingest=ingest, http_host=settings.http_host,
                              http_port=settings.http_port,
                              promptpay=replace(PromptPaySettings.for_demo() if settings.promptpay_demo else
                                                PromptPaySettings(biller_id=settings.promptpay_biller,
                                                                  target=settings.promptpay_target),
                                                expire_after_s=settings.promptpay_expiry_min * 60),
                              bank_secret=secrets.bank_secret, public_ogc=settings.public_ogc,
                              deployment=settings.deployment, https=not settings.plain_http,
                              records=settings.records_store_url(), timeseries=settings.timeseries,
                              enforce_registry=None if settings.registry is None else settings.registry == "enforce",
                              **extra)
        serve(serving)
    except HubConfigError as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
