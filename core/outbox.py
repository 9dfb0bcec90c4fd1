"""The outbox page: every stored email and SMS, newest first, for admins of a demo
site (``demo: true``), so a demo can be followed without a mail server or phone."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from core import access
from core.db import DbSession
from core.notify import Message
from core.web import render

SHOWN = 100  # the newest messages only: the page stays light however long the demo runs

router = APIRouter()


async def demo_only(request: Request) -> None:
    """Outside a demo site the page does not exist, for everyone."""
    if not request.app.state.runtime.site.config.demo:
        raise HTTPException(status_code=404)


@router.get("/outbox", response_class=HTMLResponse, dependencies=[Depends(demo_only), access.rule("outbox.view")])
def outbox_page(request: Request, session: DbSession):
    messages = session.scalars(select(Message).order_by(Message.created_at.desc(), Message.id.desc())
                               .limit(SHOWN)).all()
    return render(request, "outbox.html", messages=messages, shown=SHOWN)
