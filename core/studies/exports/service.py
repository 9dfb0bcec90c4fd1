"""Asking for an export and running its job. Nothing here knows of HTTP.

An export belongs to the principal who asked (``owner``); only they can see its
progress or fetch its file. Asking again for the same thing while a job runs gives
the running job. The job writes into a work folder and moves the finished file in
with one rename, so a file on offer is always whole; a worker killed mid-job leaves
the export ``running`` with its lock released, and ``requeue`` (at the worker's
start and every few minutes) starts it again from the beginning.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import access, clock, notify
from core.access import Principal
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity.models import Account
from core.plugins import ExportFormat
from core.sharing import pseudonyms
from core.studies import queries
from core.studies.exports import layout
from core.studies.exports.formats import CORE_FORMATS
from core.studies.exports.job import Job, collection_paused
from core.studies.exports.layout import ExportFailure
from core.studies.dicom_json import hides_patient
from core.studies.exports.models import ACTIVE, Export
from core.studies.models import Instance, Patient, Series, Study

BUILD = "core.build_export"
REQUEUE = "core.requeue_exports"
PURGE = "core.purge_exports"
STALE_AFTER = timedelta(minutes=10)  # queued this long with nobody on it: its queue entry was lost
log = logging.getLogger("filmless.exports")


class Refused(Exception):
    """The export cannot be asked for; ``message`` says why, translated."""

    def __init__(self, message: str, *, needs_acknowledgement: bool = False):
        super().__init__(message)
        self.message, self.needs_acknowledgement = message, needs_acknowledgement


@dataclass(frozen=True)
class ExportAsk:
    """The resource of the ``studies.export`` access vote."""

    format: str
    studies: tuple[Study, ...]


def formats(runtime) -> dict[str, ExportFormat]:
    """The core's formats, then every plugin's, by name."""
    def collect() -> dict[str, ExportFormat]:
        contributed = [f for found in runtime.pm.hook.export_formats(runtime=runtime) for f in found or []]
        return {f.name: f for f in [*CORE_FORMATS, *contributed]}

    return runtime.cache("export_formats", collect)


def owner_of(principal: Principal) -> str:
    return f"{principal.kind}:{principal.id}"


def folder(runtime) -> Path:
    configured = runtime.site.config.exports.path
    return Path(configured) if configured else runtime.blobs.scratch.parent / "exports"


def file_of(runtime, export: Export) -> Path:
    chosen = formats(runtime).get(export.format)  # None: a plugin's format the site no longer offers
    return folder(runtime) / f"{export.public_id}{chosen.suffix if chosen else ''}"


# -- asking ---------------------------------------------------------------------------------------

def ask(session: Session, runtime, principal: Principal, *, format_name: str, study_uids: list[str],
        language: str, acknowledged: bool = False, options: dict | None = None) -> tuple[Export, bool]:
    """The export of ``study_uids`` in ``format_name`` for ``principal``: a running one for the
    same ask, else a new queued one (True). The caller commits, then calls ``enqueue``.
    Raises ``queries.NotFound`` for a study the principal cannot see, ``Refused`` otherwise."""
    chosen = formats(runtime).get(format_name)
    if chosen is None:
        raise Refused(_("This kind of download is not offered here."))
    studies = [queries.study(session, principal, uid) for uid in dict.fromkeys(study_uids)]
    if not studies:
        raise Refused(_("Choose at least one exam."))
    now = clock.now()
    if any(not queries.images_visible(principal, study, now) for study in studies):
        raise Refused(_("The images of this exam are not available yet."))
    if not access.can(runtime.pm, principal, "studies.export", ExportAsk(chosen.name, tuple(studies))):
        raise Refused(_("These exams cannot be downloaded here. Please contact us if you need a copy."))
    if chosen.dicom and not acknowledged:
        raise Refused(_("Please tick the box to confirm that you understand what you are downloading."),
                      needs_acknowledgement=True)
    owner, refs, options = owner_of(principal), sorted(study.id for study in studies), options or {}
    if hides_patient(principal):  # its files are de-identified when the job runs (core.sharing.deidentify)
        options = {**options, "deidentify": True}
    key = hashlib.sha256(json.dumps([owner, chosen.name, refs, options], sort_keys=True).encode()).hexdigest()
    running = session.scalar(select(Export).where(Export.request_key == key, Export.status.in_(ACTIVE)))
    if running is not None:
        return running, False
    export = Export(public_id=secrets.token_hex(16), owner=owner, request_key=key, format=chosen.name,
                    study_refs=refs, options=options, language=language, status="queued", created_at=now)
    session.add(export)
    session.flush()
    for ref in refs:  # one event per study: each patient's trail shows it
        audit.record(session, actor=owner, action="export.requested", subject=f"study:{ref}",
                     detail={"export": export.public_id, "format": chosen.name,
                             "acknowledged": bool(acknowledged) if chosen.dicom else None})
    return export, True


def enqueue(runtime, export: Export) -> None:
    task = next(t for t in runtime.tasks if getattr(t, "name", None) == BUILD)
    task(export.id)


def find(session: Session, principal: Principal, public_id: str) -> Export:
    """The principal's own export, else ``queries.NotFound`` (someone else's is not there)."""
    export = session.scalar(select(Export).where(Export.public_id == public_id, Export.owner == owner_of(principal)))
    if export is None:
        raise queries.NotFound(public_id)
    return export


def recent(session: Session, principal: Principal, limit: int = 10) -> list[Export]:
    """The principal's exports still on offer or under way, newest first."""
    return list(session.scalars(select(Export).where(Export.owner == owner_of(principal),
                                                     Export.status.in_((*ACTIVE, "ready", "failed")))
                                .order_by(Export.id.desc()).limit(limit)))


# -- the job --------------------------------------------------------------------------------------

def rows(session: Session, study_refs: list[int], options: dict, *, held_out: bool = True) -> list[tuple]:
    """(instance, series, study, patient) of every file to export, in reading order; with
    ``held_out`` (a patient-side asker) without the instances carrying a report not yet released."""
    statement = (select(Instance, Series, Study, Patient).join(Series, Instance.series_ref == Series.id)
                 .join(Study, Series.study_ref == Study.id).join(Patient, Study.patient_ref == Patient.id)
                 .where(Study.id.in_(study_refs))
                 .order_by(Study.study_date.desc(), Study.id, Series.series_number, Series.id,
                           Instance.instance_number, Instance.id))
    if options.get("series_uid"):
        statement = statement.where(Series.series_uid == options["series_uid"])
    if held_out:  # the rule of queries.instances: a held report's own DICOM file waits with it
        statement = statement.where(queries.not_held_report_file(study_refs))
    return [tuple(row) for row in session.execute(statement)]


class _Lock:
    """Held while a job runs; the kernel drops it when the worker dies."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.descriptor = path, os.open(path, os.O_CREAT | os.O_RDWR, 0o600)

    def take(self) -> bool:
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.descriptor)


def run(runtime, export_id: int) -> str:
    """Build export ``export_id`` (the ``core.build_export`` task); returns its final status."""
    with runtime.sessions() as session:
        export = session.get(Export, export_id)
        if export is None or export.status not in ACTIVE:
            return export.status if export else "gone"
        lock = _Lock(folder(runtime) / f"{export.public_id}.lock")
    try:
        if not lock.take():
            return "running elsewhere"
        with collection_paused():
            return _build(runtime, export_id)
    finally:
        lock.close()


def _build(runtime, export_id: int) -> str:
    # loaded rows stay loaded across commits: the build must not hold a read transaction open
    # (on SQLite that would block the progress writes) nor reload each row
    with runtime.sessions(expire_on_commit=False) as session:
        export = session.get(Export, export_id)
        if export.status not in ACTIVE:
            return export.status
        export.status, export.done, export.attempts = "running", 0, export.attempts + 1
        session.commit()
        work = folder(runtime) / f"{export.public_id}.work"
        try:  # a full disk at mkdir or a format no longer offered fails too, never stays "running"
            chosen = formats(runtime)[export.format]
            shutil.rmtree(work, ignore_errors=True)  # a killed try's leftovers: start again from nothing
            work.mkdir(parents=True)
            found = rows(session, export.study_refs, export.options or {},
                         held_out=not _sees_everything(session, export))
            export.total = len(found)
            session.commit()
            if any(not runtime.blobs.exists(instance.blob_key) for instance, *_ in found):
                raise ExportFailure(_("Some images of this exam are missing from our archive, so the download "
                                      "could not be made. Our staff have been told and will fix it."),
                                    alert_staff=True)
            deidentifier, withheld = None, 0
            if (export.options or {}).get("deidentify"):  # asked by a share that hides patient details
                deidentifier = pseudonyms.for_export(session, export.owner)
                found, withheld = deidentifier.export_rows(found)
            entries, file_set = layout.lay_out(found, clean=deidentifier.record if deidentifier else None) \
                if chosen.dicom else (_plain(found), None)
            job = Job(runtime, export, entries, file_set, work=work, target=work / f"export{chosen.suffix}",
                      deidentifier=deidentifier, withheld=withheld)
            chosen.build(job)
            _finish(runtime, session, export, job.target)
            return "ready"
        except ExportFailure as failure:
            _fail(runtime, session, export, failure.message, alert=failure.alert_staff)
        except OSError as error:
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            log.exception("export %s failed", export.public_id)
            _fail(runtime, session, export, _("There is not enough space to make this download right now. "
                                              "Please try again later.") if full else generic_failure(), alert=True)
        except Exception:
            log.exception("export %s failed", export.public_id)
            _fail(runtime, session, export, generic_failure(), alert=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return "failed"


def generic_failure() -> str:
    return _("Something went wrong while making this download. Please try again; if it fails again, contact us.")


def _plain(found: list[tuple]) -> list[layout.Entry]:
    return [layout.Entry((), *row) for row in found]


def _finish(runtime, session: Session, export: Export, built: Path) -> None:
    with open(built, "rb+") as handle:
        os.fsync(handle.fileno())
    final = file_of(runtime, export)
    os.replace(built, final)
    now = clock.now()
    export.status, export.size, export.done = "ready", final.stat().st_size, export.total
    export.finished_at = now
    export.expires_at = now + timedelta(hours=runtime.site.config.exports.available_hours)
    audit.record(session, actor="system", action="export.ready", subject=f"export:{export.public_id}",
                 detail={"studies": export.study_refs, "format": export.format, "bytes": export.size})
    account = _account(session, export)
    if account is not None and account.notify_email:
        notify.send_email(session, to=account.email, template="export_ready", language=export.language,
                          link=f"{runtime.site.config.site.base_url}/exports/{export.public_id}",
                          expires_at=export.expires_at)
    session.commit()


def _fail(runtime, session: Session, export: Export, message: str, *, alert: bool) -> None:
    session.rollback()
    export = session.get(Export, export.id)
    now = clock.now()
    export.status, export.error, export.finished_at = "failed", message[:500], now
    export.expires_at = now + timedelta(hours=runtime.site.config.exports.available_hours)
    audit.record(session, actor="system", action="export.failed", subject=f"export:{export.public_id}",
                 detail={"studies": export.study_refs, "format": export.format, "alerted": alert})
    if alert:
        for address in _alert_addresses(runtime, session):
            notify.send_email(session, to=address, template="export_failed_staff",
                              language=runtime.site.config.site.default_language, export=export.public_id,
                              link=f"{runtime.site.config.site.base_url}/staff")
    session.commit()


def _account(session: Session, export: Export) -> Account | None:
    kind, _, ident = export.owner.partition(":")
    return session.get(Account, int(ident)) if kind == "account" and ident.isdigit() else None


def _sees_everything(session: Session, export: Export) -> bool:
    account = _account(session, export)
    return account is not None and queries.sees_everything(Principal(kind="account", roles=frozenset({account.role})))


def _alert_addresses(runtime, session: Session) -> list[str]:
    configured = runtime.site.config.exports.alert_to
    return configured or list(session.scalars(select(Account.email).where(Account.role == "admin")))


# -- keeping the queue honest ---------------------------------------------------------------------

def requeue(runtime, task) -> list[int]:
    """Queue again each export whose worker died (running, lock free) or whose queue entry was
    lost (queued for ``STALE_AFTER``, lock free)."""
    now = clock.now()
    with runtime.sessions() as session:
        found = session.execute(select(Export.id, Export.public_id, Export.status, Export.created_at)
                                .where(Export.status.in_(ACTIVE)).order_by(Export.id)).all()
        queued = []
        for export_id, public_id, status, created_at in found:
            if status == "queued" and created_at > now - STALE_AFTER:
                continue
            lock = _Lock(folder(runtime) / f"{public_id}.lock")
            try:
                if not lock.take():
                    continue  # a living worker has it
            finally:
                lock.close()
            session.execute(update(Export).where(Export.id == export_id).values(status="queued"))
            session.commit()
            task(export_id)
            queued.append(export_id)
    return queued


def purge(runtime) -> int:
    """Delete the files of exports past their availability window; the rows stay, as ``expired``."""
    now = clock.now()
    with runtime.sessions() as session:
        due = session.scalars(select(Export).where(Export.status.in_(("ready", "failed")),
                                                   Export.expires_at.is_not(None), Export.expires_at <= now)).all()
        for export in due:
            file_of(runtime, export).unlink(missing_ok=True)
            (folder(runtime) / f"{export.public_id}.lock").unlink(missing_ok=True)
            # left behind by a worker killed after the export was marked ready or failed
            shutil.rmtree(folder(runtime) / f"{export.public_id}.work", ignore_errors=True)
            export.status = "expired"
        session.commit()
    return len(due)


def register_tasks(runtime) -> list:
    from huey import crontab

    @runtime.huey.task(name=BUILD)
    def build_export(export_id: int) -> str:
        """Build one export, with progress; see ``run``."""
        return run(runtime, export_id)

    @runtime.huey.periodic_task(crontab(minute="*/5"), name=REQUEUE)
    def requeue_exports() -> list[int]:
        """Every 5 minutes: start again the exports whose worker died."""
        return requeue(runtime, build_export)

    @runtime.huey.periodic_task(crontab(minute="*/15"), name=PURGE)
    def purge_exports() -> int:
        """Every 15 minutes: delete the exports past the site's availability window."""
        return purge(runtime)

    @runtime.huey.on_startup(name="core.requeue_exports_at_start")
    def requeue_at_start() -> None:
        requeue(runtime, build_export)

    return [build_export, requeue_exports, purge_exports]
