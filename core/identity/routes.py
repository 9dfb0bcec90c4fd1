from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from core import access
from core.web import render

router = APIRouter()


@router.get("/signin", response_class=HTMLResponse, dependencies=[access.public])
def signin(request: Request):
    return render(request, "identity/signin.html")
