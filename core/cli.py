"""The ``filmless`` command. Every failure is one clear line and a non-zero exit."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

DEFAULT_SITE = "sites/demo.yaml"


class CommandError(Exception):
    pass


def _site(args):
    from core.site import load_site

    return load_site(args.site)


def _runtime(args, *, schema_current: bool = True):
    from core import db
    from core.app import build_runtime

    runtime = build_runtime(_site(args))
    try:
        db.check_schema(runtime.engine, runtime.pm, allow_behind=not schema_current)
    except Exception:
        runtime.close()
        raise
    return runtime


def _check_ready(args) -> None:
    """Site valid, plugins loadable, schema current: without starting any plugin."""
    from core import db, plugins

    site = _site(args)
    engine = db.make_engine(site.config.database)
    try:
        db.check_schema(engine, plugins.build_manager(site.plugins), allow_behind=False)
    finally:
        engine.dispose()


def _at_least_one(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {value!r}")
    return int(value)


def _port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise CommandError(f"port {port} on {host} is already in use: stop the other server or set PORT") from None


def check_site(args) -> int:
    from core.site import load_site

    site = load_site(args.file or args.site)
    print(f"{args.file or args.site}: ok ({site.name}; plugins: {', '.join(site.plugins) or 'none'})")
    return 0


def migrate(args) -> int:
    from core import db, plugins

    site = _site(args)
    engine = db.make_engine(site.config.database)
    try:
        applied = db.upgrade(engine, plugins.build_manager(site.plugins))
    finally:
        engine.dispose()
    print(f"migrated: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def seed_demo(args) -> int:
    from core.app import seed_demo as load_demo

    runtime = _runtime(args)
    try:
        print("demo data loaded" if load_demo(runtime) else "demo data already present")
        return 0
    finally:
        runtime.close()


def audit_verify(args) -> int:
    from core.audit import service as audit

    runtime = _runtime(args)
    try:
        with runtime.sessions() as session:
            ok, message = audit.verify(session)
        print(message)
        return 0 if ok else 1
    finally:
        runtime.close()


def create_staff(args) -> int:
    """A staff, help-desk or admin account; the password is read from the terminal or stdin."""
    import getpass

    from core.identity import service as identity

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    runtime = _runtime(args)
    try:
        with runtime.sessions() as session:
            try:
                account = identity.create_account(session, email=args.email, name=args.name, role=args.role,
                                                  password=password, how="staff", email_verified=True)
            except identity.AccountError as exc:
                raise CommandError(str(exc)) from None
            session.commit()
        print(f"{args.role} account {account.email} created")
        return 0
    finally:
        runtime.close()


def _operator() -> str:
    """Who ran a command, for the audit trail."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # a container user with no name
        return f"cli:uid-{os.getuid()}"


def import_files(args) -> int:
    """Files, folders, zip files and DICOMDIR trees into the study store."""
    from core.studies import importer, service

    runtime = _runtime(args)
    try:
        removed = service.clear_leftovers(runtime)
        if removed:
            print(f"removed {removed} leftovers of an interrupted run", file=sys.stderr)
        summary = importer.run(runtime, [Path(p) for p in args.paths], actor=_operator())
    finally:
        runtime.close()
    print("\n".join(summary.lines()), flush=True)
    return 1 if summary.refused else 0


def dicom_listen(args) -> int:
    from core.studies import dimse

    from pydantic import ValidationError

    from core.site import DicomListener

    runtime = _runtime(args)
    configured = runtime.site.config.studies.dicom
    try:
        listener = DicomListener(ae_title=args.ae_title or configured.ae_title, host=args.host or configured.host,
                                 port=args.port or configured.port)
    except ValidationError as exc:  # the command line's values get the site file's checks
        runtime.close()
        raise CommandError(f"dicom-listen: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    try:
        _port_free(listener.host, listener.port)
        dimse.listen(runtime, ae_title=listener.ae_title, host=listener.host, port=listener.port,
                     announce=lambda line: print(line, flush=True))
    finally:
        runtime.close()
    return 0


def link_patients(args) -> int:
    """Two records of one person at two practices: the second joins the first's person."""
    from core.studies import service

    runtime = _runtime(args)
    try:
        with runtime.sessions() as session:
            records = []
            for given in (args.first, args.second):
                issuer, colon, patient_id = given.partition(":")
                record = service.find_patient(session, issuer, patient_id) if colon else None
                if record is None:
                    raise CommandError(f"no patient record {given!r} (write ISSUER:PATIENT_ID, ':ID' for no issuer)")
                records.append(record)
            if records[0].id == records[1].id:
                raise CommandError("both are the same record")
            linked = service.link_patients(session, *records, actor=_operator())
            session.commit()
    finally:
        runtime.close()
    print(f"linked {args.second} to {args.first}" if linked else f"{args.second} and {args.first} were already linked")
    return 0


def serve(args) -> int:
    import uvicorn

    from core.app import create_app

    from core.studies import service

    _port_free(args.host, args.port)
    runtime = _runtime(args)
    # a web process killed while receiving (STOW-RS, an upload) left scratch files or uncommitted blobs
    if removed := service.clear_leftovers(runtime):
        print(f"removed {removed} leftovers of an interrupted upload", file=sys.stderr)
    print(f"{runtime.site.name}: http://{args.host}:{args.port}/"
          + (f" ({args.processes} web processes)" if args.processes > 1 else ""), flush=True)
    # X-Forwarded-For/-Proto are believed only from the proxies named in FORWARDED_ALLOW_IPS: a client
    # reaching the process directly could otherwise choose its own address for the throttles
    options = dict(host=args.host, port=args.port, log_level="info",
                   proxy_headers=bool(os.environ.get("FORWARDED_ALLOW_IPS")))
    if args.processes == 1:
        uvicorn.run(create_app(runtime.site, runtime), **options)
        return 0
    # each process builds its own runtime from the site file; everything they share (sessions,
    # throttles, the audit chain, pictures made ahead) is in the database or the blob store
    runtime.close()
    os.environ["FILMLESS_SITE"] = str(Path(args.site).resolve())
    uvicorn.run("core.app:app_of_environment_site", factory=True, workers=args.processes, **options)
    return 0


def worker(args) -> int:
    runtime = _runtime(args)
    try:
        # an idle worker looks at the queue at least every 2 s: a patient waiting on a
        # download's progress page should not wait huey's default 10 s for it to start
        consumer = runtime.huey.create_consumer(workers=args.workers, worker_type="thread", max_delay=2.0)
        print(f"{runtime.site.name}: worker consuming {len(runtime.tasks)} tasks", flush=True)
        consumer.run()
    finally:
        runtime.close()
    return 0


def run(args) -> int:
    """Web, worker and DICOM listener together; Ctrl-C, SIGTERM or SIGHUP stops them all."""
    _port_free(args.host, args.port)
    _check_ready(args)  # refuse to start anything if the site or schema is wrong
    env = {**os.environ, "FILMLESS_SITE": args.site}
    children = []
    started = stopping = False

    # `kill`, `timeout`, make and a closed terminal send SIGTERM or SIGHUP, whose default action
    # ends this process without the `finally` that stops the children (uvicorn, too, re-raises
    # SIGTERM after its own graceful stop); and a signal while a child is being started would
    # lose that child. So all three stop everything as Ctrl-C does, once: make passes its SIGTERM
    # on to a process that had `timeout`'s already, a second Ctrl-C must not cut the stop short.
    def stop(signum, frame):
        nonlocal stopping
        if signum != signal.SIGINT and signal.getsignal(signal.SIGINT) is not stop:
            signal.raise_signal(signal.SIGINT)  # uvicorn's while it serves: its graceful stop
        elif not stopping:
            stopping = True
            if started:
                raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if sig == signal.SIGINT or signal.getsignal(sig) != signal.SIG_IGN}  # nohup is obeyed
    try:
        for command in (["worker", "--workers", str(args.workers)], ["dicom-listen"]):
            # in a process group of their own, signals sent to this one's (Ctrl-C, `timeout`, a
            # closed terminal) reach them only as the SIGINT below; huey would stop at once on
            # SIGTERM and restart itself on SIGHUP
            children.append(subprocess.Popen([sys.executable, "-m", "core.cli", *command], env=env,
                                             process_group=0))
        started = True
        if stopping:
            raise KeyboardInterrupt
        return serve(args)
    finally:
        stopping = True
        for child in children:
            child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="filmless", description="Filmless imaging patient portal.")
    top.add_argument("--site", default=os.environ.get("FILMLESS_SITE", DEFAULT_SITE),
                     help="site file (default: $FILMLESS_SITE or %(default)s)")
    commands = top.add_subparsers(dest="command", required=True)

    def web_options(command):
        command.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        command.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        command.add_argument("--processes", type=_at_least_one, default=os.environ.get("WEB_PROCESSES", "1"),
                             help="web server processes sharing the port, e.g. one per core "
                                  "(default: $WEB_PROCESSES or 1)")

    def worker_options(command):
        command.add_argument("--workers", type=int, default=2, help="worker threads (default: %(default)s)")

    run = commands.add_parser("run", help="web server, worker and DICOM listener together")
    web_options(run)
    worker_options(run)
    web_options(commands.add_parser("serve", help="web server only"))
    worker_options(commands.add_parser("worker", help="background worker only"))
    commands.add_parser("migrate", help="upgrade the database to this code's schema")
    commands.add_parser("seed-demo", help="load the demo data once")
    staff = commands.add_parser("create-staff", help="create a staff, help-desk or admin account")
    staff.add_argument("email")
    staff.add_argument("--name", required=True)
    staff.add_argument("--role", choices=["staff", "helpdesk", "admin"], default="staff")
    staff.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    check = commands.add_parser("check-site", help="validate a site file without starting")
    check.add_argument("file", nargs="?")
    importing = commands.add_parser("import", help="import DICOM files, folders, zip files and DICOMDIR trees")
    importing.add_argument("paths", nargs="+", metavar="PATH")
    listen = commands.add_parser("dicom-listen", help="receive DICOM instances (C-STORE) from a PACS or modality")
    listen.add_argument("--host", help="address to listen on (default: studies.dicom.host)")
    listen.add_argument("--port", type=int, help="port (default: studies.dicom.port)")
    listen.add_argument("--ae-title", help="this listener's AE title (default: studies.dicom.ae_title)")
    link = commands.add_parser("link-patients", help="record that two patient records are the same person")
    link.add_argument("first", metavar="ISSUER:ID")
    link.add_argument("second", metavar="ISSUER:ID")
    audit = commands.add_parser("audit", help="audit trail tools")
    audit.add_subparsers(dest="audit_command", required=True).add_parser("verify", help="check the hash chain")
    return top


HANDLERS = {"run": run, "serve": serve, "worker": worker, "migrate": migrate, "seed-demo": seed_demo,
            "check-site": check_site, "audit": audit_verify, "create-staff": create_staff,
            "import": import_files, "dicom-listen": dicom_listen, "link-patients": link_patients}


def main(argv: list[str] | None = None) -> int:
    from core.db import SchemaError
    from core.plugins import PluginError
    from core.site import SiteError

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return HANDLERS[args.command](args)
    except SiteError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except (PluginError, SchemaError, CommandError) as exc:
        print(f"filmless: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
