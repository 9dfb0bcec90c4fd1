"""The background queue (huey): SQLite by default, Redis by URL (DESIGN §7)."""
from __future__ import annotations

from huey import Huey, RedisHuey, SqliteHuey


def make_huey(site) -> Huey:
    queue = site.config.queue
    name = f"filmless-{site.path.stem}"
    if queue.kind == "redis":
        return RedisHuey(name, url=queue.url)
    queue.path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name, filename=str(queue.path))


def register_core_tasks(runtime) -> list:
    """The core's own tasks; plugins add theirs through the ``tasks`` hook."""
    from core import notify
    from core.studies.exports import service as exports

    @runtime.huey.task(name="core.ping")
    def ping() -> str:
        """Answer "pong": proves a worker is consuming this site's queue."""
        return "pong"

    return [ping, *notify.register_tasks(runtime), *exports.register_tasks(runtime)]
