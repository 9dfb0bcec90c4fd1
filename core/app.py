"""The runtime (what web and worker share) and the app factory. Nothing here is
module-level state: tests build several apps with different sites in one process."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pluggy
from fastapi import Depends, FastAPI
from huey import Huey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import access, db, outbox, plugins, tasks, web
from core.identity.routes import routers as identity_routers
from core.sharing import pseudonyms
from core.site import Site
from core.studies import routers as study_routers
from core.studies.blobs import BlobStore, make_store


@dataclass
class Runtime:
    """One site's plugin manager, database and queue."""

    site: Site
    pm: pluggy.PluginManager
    engine: Engine
    sessions: sessionmaker[Session]
    huey: Huey
    blobs: BlobStore = None
    tasks: list = field(default_factory=list)
    caches: dict = field(default_factory=dict)

    def cache(self, name: str, make):
        """Per-site, per-process state kept between requests (rendered pictures, audit memo),
        made on first use; a runtime of its own per site, so two sites never share it."""
        found = self.caches.get(name)
        return found if found is not None else self.caches.setdefault(name, make())

    def close(self) -> None:
        plugins.call_each(self.pm, "shutdown", strict=False, runtime=self)
        self.engine.dispose()


def build_runtime(site: Site) -> Runtime:
    """Wire a site's plugins, database and queue, then tell plugins we start."""
    pm = plugins.build_manager(site.plugins)
    engine = db.make_engine(site.config.database)
    runtime = Runtime(site=site, pm=pm, engine=engine, sessions=None, huey=tasks.make_huey(site),
                      blobs=make_store(site.config.storage))
    runtime.sessions = db.make_sessionmaker(engine, plugins=pm, runtime=runtime)
    runtime.tasks = tasks.register_core_tasks(runtime)
    for contributed in pm.hook.tasks(runtime=runtime):
        runtime.tasks.extend(contributed or [])
    plugins.call_each(pm, "startup", runtime=runtime)
    return runtime


def create_app(site: Site, runtime: Runtime | None = None) -> FastAPI:
    """The web app of one site. Refuses to build if any route lacks an access rule."""
    runtime = runtime or build_runtime(site)

    async def lifespan(app: FastAPI):
        yield
        runtime.close()

    app = FastAPI(title=site.name, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  dependencies=[Depends(web.refuse_unusable_address)])
    app.state.runtime = runtime
    web.install(app, runtime)
    pseudonyms.install(app)  # shares that hide patient details see replacement UIDs only
    for router in identity_routers:
        app.include_router(router)
    app.include_router(outbox.router)
    from core.sharing import invite_routes  # before the share pages, so /shared/guest is never a share's page

    app.include_router(invite_routes.router)
    for router in study_routers():
        app.include_router(router)
    from core.sharing import routes as sharing_routes

    app.include_router(sharing_routes.router)
    from core.audit import routes as audit_routes

    app.include_router(audit_routes.router)
    _refuse_undeclared("the core", app.routes)
    for impl in reversed(runtime.pm.hook.routers.get_hookimpls()):
        for router in impl.function() or []:
            _refuse_undeclared(f"plugin '{impl.plugin_name}'", router.routes)
            app.include_router(router)
    from core.studies import openapi

    openapi.install(app)
    return app


def app_of_environment_site() -> FastAPI:
    """The app of the site file named by $FILMLESS_SITE: what each of several web processes
    builds for itself (``filmless serve --processes N``, which has checked the site and schema)."""
    from core.site import load_site

    return create_app(load_site(os.environ["FILMLESS_SITE"]))


def _refuse_undeclared(owner: str, routes) -> None:
    undeclared = [getattr(r, "path", repr(r)) for r in access.flatten(routes) if access.declared_rule(r) is None]
    if undeclared:
        raise plugins.PluginError(f"{owner} has routes without an access rule: {', '.join(undeclared)}")


def seed_demo(runtime: Runtime) -> bool:
    """Load every plugin's demo data once; False if it was already loaded."""
    from sqlalchemy import select

    from core.audit import service as audit
    from core.audit.models import AuditEvent

    with runtime.sessions() as session:
        if session.scalar(select(AuditEvent.seq).where(AuditEvent.action == "demo.seeded").limit(1)):
            return False
        if runtime.site.config.demo:
            from core.identity import service as identity

            identity.seed_demo(session)
            from core.studies import demo as study_demo

            study_demo.seed(session, runtime)  # ingests through the real path: commits as it goes
        runtime.pm.hook.seed_demo(session=session, runtime=runtime)
        audit.record(session, actor="system", action="demo.seeded", subject="site")
        session.commit()
    return True
