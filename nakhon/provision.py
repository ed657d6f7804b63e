"""``nakhon provision ...`` (the technician's commands) and ``nakhon agent enroll`` (on the Pi).

Every command but ``init`` goes through the hub's API with the technician's own token, so the hub audits it.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from hub.errors import HubError
from nakhon.hubclient import ApiError, Hub

IMPORT_CHUNK = 100
SAMPLE_CSV = Path(__file__).resolve().parents[1] / "provisioning" / "devices-sample.csv"


def _hub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", help="the hub's URL (https://...); env NAKHON_HUB_URL")
    p.add_argument("--ca", type=Path, help="CA file to check the hub's HTTPS certificate; env NAKHON_HUB_CA")
    p.add_argument("--token-file", type=Path,
                   help="file holding your API token (nakhon hub token add); env NAKHON_TOKEN_FILE or NAKHON_TOKEN")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``nakhon provision`` and its subcommands."""
    prov = sub.add_parser("provision", help="a deployment's CA, broker config and device registry")
    verbs = prov.add_subparsers(dest="action", required=True)
    init = verbs.add_parser("init", help="create a deployment: CA, broker certificate and config, hub credentials")
    init.add_argument("dir", type=Path)
    init.add_argument("--org", default="Nakhon municipality", help="organisation name in the certificates")
    init.add_argument("--broker-name", action="append", dest="names",
                      help="DNS name or address devices reach the broker by (repeat; default localhost, 127.0.0.1)")
    init.add_argument("--device-port", type=int, default=8883)
    init.add_argument("--hub-port", type=int, default=1884, help="the broker's loopback port for the hub")
    init.add_argument("--broker-user", default="mosquitto", help="the broker's service user (run init as root)")
    init.add_argument("--hub-user", default="nakhon",
                      help="the hub's service user, owner of the issuing CA's key, hub/ and crl/ (run init as root)")

    device = verbs.add_parser("device", help="register and manage devices").add_subparsers(dest="verb",
                                                                                          required=True)
    add = device.add_parser("add", help="register a device (pending) and print its enrollment code")
    add.add_argument("id")
    add.add_argument("--node", required=True, help="node kind: a template in firmware-configs/")
    add.add_argument("--site", required=True)
    add.add_argument("--lat", type=float)
    add.add_argument("--lon", type=float)
    add.add_argument("--code-hours", type=float, default=24.0, help="the code expires after this (default 24)")
    add.add_argument("--out", type=Path, default=Path("."), help="folder for the device's config (ID.toml)")
    imp = device.add_parser("import", help="register many devices from a CSV (device,node,site,lat,lon)")
    imp.add_argument("csv", type=Path, help=f"columns device,node,site,lat,lon; a sample: {SAMPLE_CSV}")
    for verb, text in (("code", "a new enrollment code (the last one expired or was lost)"),
                       ("rotate", "an enrollment code for a new certificate of an active device"),
                       ("suspend", "stop a device's access at once (resume brings it back)"),
                       ("resume", "give a suspended device its access back"),
                       ("revoke", "revoke its certificates (CRL) and access; it must enroll again"),
                       ("retire", "retire a device for good (admin): id kept, certificates revoked")):
        v = device.add_parser(verb, help=text)
        v.add_argument("id")
        if verb in ("code", "rotate"):
            v.add_argument("--code-hours", type=float, default=24.0)
        _hub_args(v)
    bundle = device.add_parser("bundle", help="offline install: a tarball with config, key, certificate and CA")
    bundle.add_argument("id")
    bundle.add_argument("--out", type=Path, help="the tarball (default ID-bundle.tar)")
    listing = device.add_parser("list", help="the registry")
    certs = verbs.add_parser("certs", help="device certificates").add_subparsers(dest="verb", required=True)
    expiring = certs.add_parser("expiring", help="certificates that end within --days")
    expiring.add_argument("--days", type=float, default=30.0)
    for p in (add, imp, bundle, listing, expiring):
        _hub_args(p)


def add_enroll_parser(agent: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``nakhon agent enroll``."""
    enroll = agent.add_parser("enroll", help="enroll this device with its code: key, CSR, certificate, config")
    enroll.add_argument("--hub", required=True, help="the hub's URL (https://...)")
    enroll.add_argument("--code", required=True, help="the enrollment code the technician was given")
    enroll.add_argument("--ca", type=Path, help="CA file to check the hub's HTTPS certificate")
    enroll.add_argument("--ca-sha256", metavar="FINGERPRINT",
                        help="the SHA-256 fingerprint of the deployment's root CA (in the enrollment code's QR): "
                             "the hub's CA is fetched and accepted only when it matches; no --ca needed")
    enroll.add_argument("--dir", type=Path, default=Path("/etc/nakhon"),
                        help="where the key, certificate and config go (default /etc/nakhon)")
    enroll.add_argument("--keep-config", action="store_true",
                        help="keep an existing device.toml (a rotation) instead of writing the hub's")


def run_enroll(args: argparse.Namespace) -> int:
    """``nakhon agent enroll``."""
    from nakhon.enroll import enroll

    try:
        done = enroll(Hub(args.hub.rstrip("/"), args.ca), args.code, args.dir, args.keep_config, args.ca_sha256)
    except (ApiError, HubError, OSError, ValueError) as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 1
    print(f"enrolled as {done.device}; wrote {', '.join(str(f) for f in done.files)}")
    print(f"check it: nakhon agent check {done.directory / 'device.toml'}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``nakhon provision ...``: 0 on success, 1 when the hub refused, 2 on a usage error."""
    try:
        if args.action == "init":
            return _init(args)
        hub = Hub.from_args(args.hub, args.ca, args.token_file)
        handler = _DEVICE[args.verb] if args.action == "device" else _certs
        return handler(hub, args)
    except ApiError as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 2 if err.status == 0 else 1
    except (HubError, OSError) as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    from hub.provision.deployment import Deployment, init

    names = tuple(args.names) if args.names else ("localhost", "127.0.0.1")
    for line in init(args.dir, Deployment(org=args.org, broker_names=names, device_port=args.device_port,
                                          hub_port=args.hub_port), broker_user=args.broker_user,
                     hub_user=args.hub_user):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout)
    return 0


def _qr(text: str) -> None:
    import segno

    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True)
    print(out.getvalue())


def _add(hub: Hub, args: argparse.Namespace) -> int:
    answer = hub.call("POST", "/api/provision/devices", {
        "device": args.id, "node": args.node, "site": args.site, "lat": args.lat, "lon": args.lon,
        "code_ttl_s": args.code_hours * 3600})
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{args.id}.toml"
    target.write_text(answer["config"], encoding="utf-8")
    print(f"registered {args.id} ({args.node}) as pending; its config: {target}")
    _print_code(hub, answer)
    return 0


def _print_code(hub: Hub, answer: dict[str, str], rotation: bool = False) -> None:
    """The code, and the command that enrolls with it (also as a QR code): it pins the deployment's CA."""
    print(f"enrollment code (single use, expires {answer['code_expires_at']}):\n\n    {answer['code']}\n")
    command = f"nakhon agent enroll --hub {hub.url} --code {answer['code']}"
    if answer.get("ca_sha256"):
        command += f" --ca-sha256 {answer['ca_sha256']}"
    if rotation:
        command += " --keep-config"
    _qr(command)
    print(f"on the device, run:\n    sudo {command}")
    if answer.get("ca_sha256"):
        print(f"(the deployment's root CA has the SHA-256 fingerprint {answer['ca_sha256']}: the device trusts the "
              "hub only with that CA)")


def _code(hub: Hub, args: argparse.Namespace) -> int:
    answer = hub.call("POST", f"/api/provision/devices/{args.id}/code", {"ttl_s": args.code_hours * 3600})
    if args.verb == "rotate":
        print(f"rotation of {args.id}: on the device, enroll with this code and --keep-config; the old "
              "certificate stays valid until it ends or is revoked")
    _print_code(hub, answer, rotation=args.verb == "rotate")
    return 0


def _status(hub: Hub, args: argparse.Namespace) -> int:
    answer = hub.call("DELETE", f"/api/devices/{args.id}") if args.verb == "retire" else \
        hub.call("POST", f"/api/provision/devices/{args.id}/{args.verb}")
    print(f"{args.id}: {answer['status']}")
    print(_EFFECT[args.verb])
    return 0


_EFFECT = {
    "suspend": "its publishes are refused now and it is disconnected; resume gives its access back",
    "resume": "it may publish again from its next connection (it reconnects on its own within a minute)",
    "revoke": "its publishes are refused now and it is disconnected; its certificate is on the CRL, which the "
              "hub made the broker reload: it cannot connect again (the hub's log says if the reload failed)",
    "retire": "its access is gone and its certificates are revoked (on the CRL the broker reloads): it cannot "
              "connect again; the id stays taken",
}


def _import(hub: Hub, args: argparse.Namespace) -> int:
    try:
        with args.csv.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        print(f"nakhon: cannot read {args.csv}: {err}", file=sys.stderr)
        return 2
    fields = ("device", "node", "site", "lat", "lon")
    results: list[dict[str, str]] = []
    for start in range(0, len(rows), IMPORT_CHUNK):
        chunk = [{k: (r.get(k) or "").strip()[:200] for k in fields} for r in rows[start:start + IMPORT_CHUNK]]
        answer = hub.call("POST", "/api/provision/devices/import", chunk)
        results += [{**a, "row": str(start + int(a["row"]))} for a in answer]
        _progress(len(results), len(rows))
    print(file=sys.stderr)
    counts = {k: sum(1 for r in results if r["result"] == k) for k in ("created", "skipped", "refused")}
    print(f"{'row':>5}  {'device':<24} {'result':<8} reason")
    for r in results:
        print(f"{r['row']:>5}  {r['device'][:24]:<24} {r['result']:<8} {r['reason']}")
    print(f"{len(results)} rows: {counts['created']} created, {counts['skipped']} skipped, "
          f"{counts['refused']} refused")
    return 1 if counts["refused"] else 0


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)


def _list(hub: Hub, args: argparse.Namespace) -> int:
    for e in hub.call("GET", "/api/provision/devices"):
        print(f"{e['device']:<24} {e['status']:<10} {e['node']:<20} {e['site']}")
    return 0


def _bundle(hub: Hub, args: argparse.Namespace) -> int:
    """Enroll on the device's behalf here (the key is made on this machine: the offline fallback)."""
    from nakhon.enroll import enroll

    out: Path = args.out or Path(f"{args.id}-bundle.tar")
    code = hub.call("POST", f"/api/provision/devices/{args.id}/code", {"ttl_s": 600})["code"]
    with tempfile.TemporaryDirectory() as tmp:
        done = enroll(hub, code, Path(tmp))
        fd_path = out.with_name(f".{out.name}.tmp")
        fd_path.touch(mode=0o600)
        fd_path.chmod(0o600)
        with tarfile.open(fd_path, "w") as tar:
            for f in done.files:
                info = tar.gettarinfo(str(f), arcname=f"nakhon/{f.name}")
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with f.open("rb") as data:
                    tar.addfile(info, data)
        fd_path.replace(out)
    print(f"wrote {out} (mode 600): the device's key, certificate, CA and config for {done.device}")
    print(f"on the Pi: sudo tar -xf {out.name} -C /etc   (its files go to /etc/nakhon/), then "
          "nakhon agent check /etc/nakhon/device.toml; delete the tarball from the USB stick afterwards")
    return 0


def _certs(hub: Hub, args: argparse.Namespace) -> int:
    rows = hub.call("GET", f"/api/provision/certificates?expiring_days={args.days:g}")
    for c in rows:
        print(f"{c['device']:<24} ends {c['not_after']}  ({c['expires_in_s'] / 86_400:.1f} days)  serial {c['serial']}")
    print(f"{len(rows)} certificate(s) end within {args.days:g} days")
    return 1 if rows else 0


_DEVICE: dict[str, Callable[[Hub, argparse.Namespace], int]] = {
    "add": _add, "import": _import, "code": _code, "rotate": _code, "suspend": _status, "resume": _status,
    "revoke": _status, "retire": _status, "list": _list, "bundle": _bundle,
}

