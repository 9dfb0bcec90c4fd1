"""The identity domain's pages, one module per topic; the app mounts ``routers``."""
from core.identity.routes import account, invitations, registration, signin, staff

routers = [signin.router, registration.router, account.router, invitations.router, staff.router]
