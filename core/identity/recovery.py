"""Forgotten passwords and activation links: emailed, single-use links that let a
person choose a password. Plain functions taking a Session; no HTTP.

"Forgot password" answers the same whether or not the address has an account;
only the email differs (a reset link, a new activation link, a renewed
invitation, or nothing at all).
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from core import clock, notify
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity import service, sessions
from core.identity.models import Account
from core.identity.registration import send_activation
from core.identity.security import (CodeCheck, digest, issue_code, new_token, record_failure, redeem_link,
                                    wait_seconds)

PURPOSES = {"reset": "password.reset", "activation": "account.activated"}  # link purpose -> audit action


def request_keys(email: str, ip: str) -> list[str]:
    return [f"reset:ip:{ip}", f"reset:email:{digest(service.normalise_email(email))}"]


def request_reset(session: Session, *, site, email: str, ip: str) -> int:
    """"Forgot password": 0 when handled (whatever happened), else the seconds to wait.
    Every request counts towards the delay, per address asked for and per IP address."""
    email = service.normalise_email(email)
    keys = request_keys(email, ip)
    subject = f"email:{digest(email)[:16]}"
    if wait := wait_seconds(session, keys):
        audit.record(session, actor=f"ip:{ip}", action="password.reset_throttled", subject=subject)
        return wait
    record_failure(session, keys)
    account = service.account_by_email(session, email)
    if account is not None and not site.config.demo and email in service.DEMO_ACCOUNTS:
        account = None  # demo accounts are usable in demo sites only
    if account is not None and account.password_hash:
        minutes = site.config.identity.reset_valid_minutes
        token = issue_code(session, purpose="reset", account_id=account.id, code=new_token(), minutes=minutes)
        notify.send_email(session, to=account.email, template="password_reset", language=account.language,
                          link=f"{site.config.site.base_url}/password/reset/{token}", minutes=minutes)
        sent = "password_reset"
    elif account is not None:  # opened at the scan, never activated: a new activation link
        send_activation(session, site=site, account=account)
        sent = "activation"
    else:
        sent = "invitation" if _renew_invitations(session, site=site, email=email) else "nothing"
    audit.record(session, actor=f"ip:{ip}", action="password.reset_requested",
                 subject=f"account:{account.id}" if account else subject, detail={"sent": sent})
    return 0


def _renew_invitations(session: Session, *, site, email: str) -> bool:
    try:
        from core.identity.invitations import renew_for_email
    except ImportError:  # a core without invitations
        return False
    return bool(renew_for_email(session, site=site, email=email))


class LinkGone(Exception):
    """The link is unknown, expired or already used; ``problem`` says which."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def look_up(session: Session, *, purpose: str, token: str) -> CodeCheck:
    """Whether a reset or activation link still works (it is not used up by looking)."""
    found = redeem_link(session, purpose=purpose, token=token)
    if found.ok and session.get(Account, found.code.account_id) is None:
        return CodeCheck(False, "none")
    return found


def choose_password(session: Session, *, purpose: str, token: str, password: str, confirmation: str,
                    ip: str) -> Account:
    """Set the password through a reset or activation link, use the link up and end
    every session of the account (whoever knew the old password is signed out)."""
    found = look_up(session, purpose=purpose, token=token)
    if not found.ok:
        raise LinkGone(found.problem)
    account = session.get(Account, found.code.account_id)
    if password != confirmation:
        raise service.AccountError(_("The two passwords are not the same. Please type them again."))
    actor = f"account:{account.id}"
    service.set_password(session, account, password, actor=actor)
    now = clock.now()
    found.code.used_at = now
    account.email_verified_at = account.email_verified_at or now  # the link came to this address
    ended = sessions.end_all(session, account_id=account.id)
    audit.record(session, actor=actor, action=PURPOSES[purpose], subject=actor,
                 detail={"ip": ip, "sessions_ended": ended})
    return account
