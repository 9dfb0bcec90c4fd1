"""The patient's side of the audit trail: "My activity" and the accounting of disclosures.

Both read the append-only trail (``core.audit.models.AuditEvent``) and tell each event
in plain language: who (you, a person acting for the patient, a share's recipient,
staff, emergency access), did what, to which exam, and when.

- ``my_activity``: for a signed-in account, its own sign-ins and everything done to the
  records of the patients it may see (``queries.patient_refs``): shares made and opened,
  views and downloads by anyone, staff and emergency access. Paged, by kind and date.
- ``disclosures``: for staff, every view or download of one patient's records by someone
  other than the patient and the people acting for them, with its purpose.

Which events count is decided by the action lists below: an action not listed (an
ingest, a settings change) is not shown, so a new action is hidden until named here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sqlalchemy import String, and_, cast, func, literal, not_, or_, select
from sqlalchemy.orm import Session

from core.access import Principal
from core.audit.models import AuditEvent
from core.i18n import N_, ngettext
from core.i18n import gettext as _
from core.identity.models import Account, PatientLink
from core.sharing.models import Share
from core.studies import queries
from core.studies.models import Patient, Study
from core.studies.pages import date_range, patient_name, study_day

PAGE_SIZE = 25
REPEATS_WITHIN = timedelta(minutes=15)  # the same thing again this soon is told once, with a count
STAFF_ROLES = ("staff", "helpdesk", "admin")
SIGN_IN_ACTIONS = ("signin.succeeded", "signin.failed", "signin.throttled", "signin.second_factor_failed",
                   "signout.everywhere", "password.reset", "account.password_changed", "account.recovery_code_used")
SHARE_ACTIONS = ("share.created", "share.emailed", "share.opened", "share.listed", "share.revoked",
                 "share.password_failed", "share.quick_code_failed")
VIEW_ACTIONS = ("studies.listed", "study.viewed", "study.viewed_images", "report.viewed", "image.viewed",
                "dicomweb.search", "dicomweb.metadata", "dicomweb.frames", "dicomweb.rendered", "dicomweb.thumbnail")
DOWNLOAD_ACTIONS = ("image.downloaded", "report.downloaded", "export.requested", "export.downloaded",
                    "dicomweb.retrieve", "dicomweb.bulk")
STAFF_ACTIONS = ("staff.patient_viewed", "disclosures.exported")
EMERGENCY = "breakglass"  # any action naming it, or an actor of this kind, is emergency access
# What the filter offers, in its order: (value, label)
KINDS = (("signins", N_("Sign-ins")), ("shares", N_("Shares")), ("views", N_("Views")),
         ("downloads", N_("Downloads")), ("staff", N_("Staff and emergency access")))
PURPOSES = {"share": N_("shared by the patient"), "staff": N_("treatment / operations"),
            "emergency": N_("emergency access"), "other": N_("other access")}
SENTENCES = {
    "signin.succeeded": N_("Signed in"),
    "signin.failed": N_("Sign-in refused: wrong password"),
    "signin.throttled": N_("Sign-in delayed after too many wrong passwords"),
    "signin.second_factor_failed": N_("Sign-in refused: wrong code"),
    "signout.everywhere": N_("Signed out on every device"),
    "password.reset": N_("Password reset with an emailed link"),
    "account.password_changed": N_("Password changed"),
    "account.recovery_code_used": N_("Signed in with a recovery code"),
    "studies.listed": N_("Looked at the list of exams"),
    "study.viewed": N_("Looked at the exam"),
    "report.viewed": N_("Read the report"),
    "dicomweb.search": N_("Found the exam in a search"),
    "image.downloaded": N_("Downloaded a picture"),
    "report.downloaded": N_("Downloaded the report as PDF"),
    **dict.fromkeys(("study.viewed_images", "image.viewed", "dicomweb.metadata", "dicomweb.frames",
                     "dicomweb.rendered", "dicomweb.thumbnail"), N_("Looked at the images")),
    **dict.fromkeys(("dicomweb.retrieve", "dicomweb.bulk"), N_("Retrieved the image files")),
    "staff.patient_viewed": N_("Opened the patient record"),
    "disclosures.exported": N_("Prepared an accounting of disclosures"),
}


# -- filters ----------------------------------------------------------------------------------------

@dataclass
class ActivityFilters:
    kind: str = ""  # "" for every kind, else a value of KINDS
    date_from: date | None = None
    date_to: date | None = None
    page: int = 1
    problems: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.kind or self.date_from or self.date_to)

    @classmethod
    def parse(cls, kind: str = "", date_from: str = "", date_to: str = "", page: str = "1") -> "ActivityFilters":
        """From the GET form; a value that cannot be used is dropped (and a wrong date named)."""
        filters = cls(kind=kind if kind in dict(KINDS) else "")
        filters.date_from, filters.date_to = date_range(date_from, date_to, filters.problems)
        filters.page = max(1, int(page)) if page.isdigit() and len(page) < 7 else 1
        return filters

    def address(self, page: int) -> str:
        params = {"kind": self.kind, "date_from": self.date_from.isoformat() if self.date_from else "",
                  "date_to": self.date_to.isoformat() if self.date_to else "", "page": page if page > 1 else ""}
        query = urlencode({name: value for name, value in params.items() if value})
        return f"/activity?{query}" if query else "/activity"


def period(date_from: date | None, date_to: date | None, zone: str) -> tuple[datetime | None, datetime | None]:
    """Whole days in the site's time zone, as [start, end) moments."""
    local = ZoneInfo(zone)
    start = datetime.combine(date_from, time.min, tzinfo=local) if date_from else None
    end = datetime.combine(date_to + timedelta(days=1), time.min, tzinfo=local) if date_to else None
    return start, end


# -- what the trail holds about a patient ------------------------------------------------------------

def _subjects(patients: set[int], extra: tuple[str, ...] = ()):
    """Events about these patient records: the records, their studies and their shares."""
    refs = sorted(patients)

    def named(prefix: str, model):
        return select(literal(prefix, String).concat(cast(model.id, String))).where(model.patient_ref.in_(refs))

    return or_(AuditEvent.subject.in_([f"patient:{ref}" for ref in refs] + list(extra)),
               AuditEvent.subject.in_(named("study:", Study)), AuditEvent.subject.in_(named("share:", Share)))


def _staff_actors(session: Session) -> set[str]:
    return {f"account:{ident}" for ident in session.scalars(select(Account.id).where(Account.role.in_(STAFF_ROLES)))}


def _staffish(staff_actors: set[str]):
    return or_(AuditEvent.actor.in_(sorted(staff_actors)), AuditEvent.actor.startswith("pacs:"),
               AuditEvent.actor.startswith(f"{EMERGENCY}:"))


def _is_staffish(actor: str, staff_actors: set[str]) -> bool:
    return actor in staff_actors or actor.startswith(("pacs:", f"{EMERGENCY}:"))


def _kind_clauses(me: str, staff_actors: set[str]) -> dict:
    staffish = _staffish(staff_actors)
    return {
        "signins": and_(AuditEvent.action.in_(SIGN_IN_ACTIONS), AuditEvent.subject == me),
        "shares": AuditEvent.action.in_(SHARE_ACTIONS),
        "views": and_(AuditEvent.action.in_(VIEW_ACTIONS), not_(staffish)),
        "downloads": and_(AuditEvent.action.in_(DOWNLOAD_ACTIONS), not_(staffish)),
        "staff": or_(and_(staffish, AuditEvent.action.in_(VIEW_ACTIONS + DOWNLOAD_ACTIONS + STAFF_ACTIONS)),
                     AuditEvent.action.contains(EMERGENCY)),
    }


def kind_of(event: AuditEvent, me: str, staff_actors: set[str]) -> str | None:
    """The filter kind an event is listed under (the same rules as ``_kind_clauses``)."""
    action, staffish = event.action, _is_staffish(event.actor, staff_actors)
    if EMERGENCY in action or (staffish and action in VIEW_ACTIONS + DOWNLOAD_ACTIONS + STAFF_ACTIONS):
        return "staff"
    if action in SIGN_IN_ACTIONS:
        return "signins" if event.subject == me else None
    if action in SHARE_ACTIONS:
        return "shares"
    return "views" if action in VIEW_ACTIONS else "downloads" if action in DOWNLOAD_ACTIONS else None


# -- telling an event ----------------------------------------------------------------------------------

@dataclass
class Told:
    """One event in words: who did it, what they did, and to what."""

    who: str
    doing: str
    what: str
    patient: str = ""  # whose record, for readers acting for several patients


class _Names:
    """The studies, shares, accounts and patients a batch of events mentions, loaded once."""

    def __init__(self, session: Session, events: list[AuditEvent]):
        ids = {"study": set(), "share": set(), "account": set(), "patient": set()}
        for event in events:
            for reference in (event.actor, event.subject):
                prefix, _sep, ident = reference.partition(":")
                prefix = "account" if prefix == "guest" else prefix  # a guest is an account too
                if prefix in ids and ident.isdigit():
                    ids[prefix].add(int(ident))
            detail = event.detail or {}
            ids["study"].update(ref for ref in detail.get("studies") or [] if isinstance(ref, int))
            if isinstance(detail.get("share"), int):
                ids["share"].add(detail["share"])
        self.shares = self._load(session, Share, ids["share"])
        ids["study"].update(ref for share in self.shares.values() for ref in share.study_refs or [])
        self.studies = self._load(session, Study, ids["study"])
        self.accounts = self._load(session, Account, ids["account"])
        ids["patient"] |= {row.patient_ref for row in [*self.studies.values(), *self.shares.values()]}
        self.patients = self._load(session, Patient, ids["patient"])

    @staticmethod
    def _load(session: Session, model, ids: set[int]) -> dict:
        return {row.id: row for row in session.scalars(select(model).where(model.id.in_(ids)))} if ids else {}

    def study_label(self, study_id) -> str:
        study = self.studies.get(study_id)
        if study is None:
            return _("An exam that is no longer stored")
        day = study_day(study.study_date) or _("date not recorded")
        return f"{study.description or _('Exam')} · {day}"

    def studies_label(self, detail: dict) -> str:
        if detail.get("portfolio"):
            return _("All exams, including future ones")
        labels = [self.study_label(ref) for ref in detail.get("studies") or []]
        if len(labels) > 3:
            return "; ".join(labels[:3]) + " " + ngettext("and %(num)s more", "and %(num)s more", len(labels) - 3)
        return "; ".join(labels)

    def share(self, event: AuditEvent) -> tuple[str, str]:
        """(nickname, recipient email) of the share an event is about or by."""
        detail = event.detail or {}
        share = None
        for reference in (event.actor, event.subject):
            prefix, _sep, ident = reference.partition(":")
            share = share or (self.shares.get(int(ident)) if prefix == "share" and ident.isdigit() else None)
        if share is None and isinstance(detail.get("share"), int):
            share = self.shares.get(detail["share"])
        nickname = detail.get("nickname") or (share.nickname if share else "")
        return nickname, detail.get("recipient") or (share.recipient_email if share else "") or ""

    def whose(self, subject: str) -> str:
        prefix, _sep, ident = subject.partition(":")
        ref = int(ident) if ident.isdigit() else None
        if prefix == "study" and ref in self.studies:
            ref = self.studies[ref].patient_ref
        elif prefix == "share" and ref in self.shares:
            ref = self.shares[ref].patient_ref
        elif prefix != "patient":
            return ""
        return patient_name(self.patients.get(ref))


def _who(event: AuditEvent, names: _Names, me: str) -> str:
    kind, _sep, ident = event.actor.partition(":")
    if event.actor == me:
        return _("You")
    if kind == "account":
        account = names.accounts.get(int(ident)) if ident.isdigit() else None
        if account is None:
            return _("A portal user")
        return _("%(name)s (staff)", name=account.name) if account.role in STAFF_ROLES else account.name
    if kind == "guest":
        account = names.accounts.get(int(ident)) if ident.isdigit() else None
        return _("%(email)s (guest account)", email=account.email) if account else _("A guest account")
    if kind == "share":
        nickname, email = names.share(event)
        if email:
            return _("%(email)s, with the share “%(nickname)s”", email=email, nickname=nickname)
        if nickname:
            return _("Someone with the share “%(nickname)s”", nickname=nickname)
        return _("Someone with a share link")
    return {"ip": _("Someone not signed in"), "pacs": _("The practice's imaging system"),
            EMERGENCY: _("A clinician using emergency access"), "visit": _("Someone with a visit code"),
            "system": _("The portal")}.get(kind, _("Someone"))


def _doing(event: AuditEvent, names: _Names) -> str:
    action, detail = event.action, event.detail or {}
    if action in SHARE_ACTIONS:
        nickname, email = names.share(event)
        if action == "share.created":
            return (_("Created the share “%(nickname)s” for %(email)s", nickname=nickname, email=email) if email
                    else _("Created the share “%(nickname)s”", nickname=nickname))
        return {"share.emailed": _("Emailed the share “%(nickname)s” to %(email)s", nickname=nickname, email=email),
                "share.opened": _("Opened the share “%(nickname)s”", nickname=nickname),
                "share.listed": _("Saw the share “%(nickname)s” in their list", nickname=nickname),
                "share.quick_code_failed": _("Entered a wrong Quick Share code or date of birth"),
                "share.revoked": _("Turned off the share “%(nickname)s”", nickname=nickname),
                "share.password_failed": _("Entered a wrong password for the share “%(nickname)s”",
                                           nickname=nickname)}[action]
    if action == "export.requested":
        return _("Asked for a download (%(format)s)", format=str(detail.get("format", "")).upper())
    if action == "export.downloaded":
        return _("Downloaded the exam (%(format)s)", format=str(detail.get("format", "")).upper())
    if action == "study.viewed" and detail.get("tab") == "images":
        action = "study.viewed_images"  # the images tab: the same as the viewer, to its reader
    if action in SENTENCES:
        return _(SENTENCES[action])
    return _("Emergency access") if EMERGENCY in action else action


def _what(event: AuditEvent, names: _Names) -> str:
    prefix, _sep, ident = event.subject.partition(":")
    if prefix == "study" and ident.isdigit():
        return names.study_label(int(ident))
    if event.action in ("share.created", "share.opened"):
        return names.studies_label(event.detail or {})
    if event.action in ("share.emailed", "share.listed"):
        share = names.shares.get((event.detail or {}).get("share"))
        return names.studies_label({"portfolio": share.portfolio, "studies": share.study_refs}) if share else ""
    if prefix == "patient" and ident.isdigit() and (event.action in STAFF_ACTIONS or EMERGENCY in event.action):
        return _("Patient record of %(name)s", name=patient_name(names.patients.get(int(ident))) or "—")
    return ""


def tell(events: list[AuditEvent], names: _Names, me: str = "") -> list[Told]:
    return [Told(who=_who(event, names, me), doing=_doing(event, names), what=_what(event, names),
                 patient=names.whose(event.subject)) for event in events]


# -- My activity ---------------------------------------------------------------------------------------

@dataclass
class Entry:
    at: datetime  # the latest of the events it stands for
    kind: str
    told: Told
    count: int = 1
    first_at: datetime | None = None  # the earliest, when several in a row were the same


@dataclass
class ActivityPage:
    entries: list[Entry]
    page: int
    total: int
    has_next: bool
    several_patients: bool  # the reader acts for more than one patient: say whose each line is


def my_activity(session: Session, principal: Principal, filters: ActivityFilters, *, zone: str,
                page_size: int = PAGE_SIZE) -> ActivityPage:
    """The account's page of its activity, newest first. Repeats in a row (a viewer's many
    requests) are told once, with how many times."""
    me = f"account:{principal.id}"
    patients = queries.patient_refs(session, principal)
    staff_actors = _staff_actors(session) - {me}
    clauses = _kind_clauses(me, staff_actors)
    chosen = clauses[filters.kind] if filters.kind else or_(*clauses.values())
    conditions = [_subjects(patients, (me,)), chosen]
    start, end = period(filters.date_from, filters.date_to, zone)
    if start:
        conditions.append(AuditEvent.at >= start)
    if end:
        conditions.append(AuditEvent.at < end)
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(*conditions)) or 0
    events = list(session.scalars(select(AuditEvent).where(*conditions).order_by(AuditEvent.seq.desc())
                                  .offset((filters.page - 1) * page_size).limit(page_size)))
    entries: list[Entry] = []
    for event, told in zip(events, tell(events, _Names(session, events), me)):
        kind = kind_of(event, me, staff_actors) or ""
        last = entries[-1] if entries else None
        if last is not None and (last.kind, last.told) == (kind, told) and \
                (last.first_at or last.at) - event.at <= REPEATS_WITHIN:
            last.count, last.first_at = last.count + 1, event.at
        else:
            entries.append(Entry(at=event.at, kind=kind, told=told))
    return ActivityPage(entries=entries, page=filters.page, total=total,
                        has_next=filters.page * page_size < total, several_patients=len(principal.scope) > 1)


def kind_labels() -> dict[str, str]:
    return {value: _(label) for value, label in KINDS}


# -- the accounting of disclosures -------------------------------------------------------------------

@dataclass
class Disclosure:
    at: datetime
    recipient: str
    recipient_email: str
    what: str
    doing: str
    purpose: str


def same_person(session: Session, patient_ref: int) -> set[int]:
    """The patient's records here and at the other practices linked to it."""
    return queries.patient_refs(session, Principal(kind="account", scope=frozenset({str(patient_ref)})))


def disclosures(session: Session, patient_ref: int, *, start: datetime, end: datetime) -> list[Disclosure]:
    """Every view or download of the patient's records in [start, end) by anyone other than the
    patient and the accounts acting for them: share recipients, staff and the practice's systems,
    emergency access. Oldest first."""
    patients = same_person(session, patient_ref)
    own = {f"account:{ident}" for ident in
           session.scalars(select(PatientLink.account_id).where(PatientLink.patient_ref.in_(patients)))}
    events = list(session.scalars(select(AuditEvent).where(
        _subjects(patients), AuditEvent.at >= start, AuditEvent.at < end,
        or_(AuditEvent.action.in_(("share.opened", "share.listed") + VIEW_ACTIONS + DOWNLOAD_ACTIONS + STAFF_ACTIONS),
            AuditEvent.action.contains(EMERGENCY)),
        AuditEvent.actor.not_in(sorted(own) or [""]),
        not_(or_(*(AuditEvent.actor.startswith(kind) for kind in ("ip:", "visit:", "system")))),
    ).order_by(AuditEvent.seq)))
    names, staff_actors = _Names(session, events), _staff_actors(session)
    found = []
    for event, told in zip(events, tell(events, names)):
        recipient, email, purpose = _recipient(event, names, staff_actors)
        found.append(Disclosure(at=event.at, recipient=recipient, recipient_email=email, what=told.what,
                                doing=told.doing, purpose=_(PURPOSES[purpose])))
    return found


def _recipient(event: AuditEvent, names: _Names, staff_actors: set[str]) -> tuple[str, str, str]:
    """(recipient, their email, purpose key)."""
    kind, _sep, ident = event.actor.partition(":")
    emergency = EMERGENCY in event.action or kind == EMERGENCY
    if kind == "share":
        nickname, email = names.share(event)
        return _("Share “%(nickname)s”", nickname=nickname), email, "emergency" if emergency else "share"
    if kind == "account":
        account = names.accounts.get(int(ident)) if ident.isdigit() else None
        purpose = "emergency" if emergency else "staff" if event.actor in staff_actors else "other"
        return (account.name, account.email, purpose) if account else (_("A portal user"), "", purpose)
    if kind == "guest":
        account = names.accounts.get(int(ident)) if ident.isdigit() else None
        return _("A guest account"), account.email if account else "", "share"
    if kind == "pacs":
        return _("The practice's imaging system"), "", "emergency" if emergency else "staff"
    detail = event.detail or {}
    who = str(detail.get("clinician") or detail.get("name") or _("A clinician using emergency access"))
    return who, str(detail.get("email") or ""), "emergency" if emergency else "other"
