from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from core import access
from core.web import render

router = APIRouter(prefix="/billing")


@router.get("/", response_class=HTMLResponse, dependencies=[access.public])
def index(request: Request):
    return render(request, "clinic_payments/index.html")
