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
    from core.studies import render
    from core.studies.exports import service as exports

    @runtime.huey.task(name="core.ping")
    def ping() -> str:
        """Answer "pong": proves a worker is consuming this site's queue."""
        return "pong"

    @runtime.huey.task(name=render.RENDER_AHEAD)
    def render_ahead(instance_ids: list[int]) -> int:
        """Make the default pictures of newly stored images (``render.render_ahead``)."""
        return render.render_ahead(runtime, instance_ids)

    return [ping, render_ahead, *notify.register_tasks(runtime), *exports.register_tasks(runtime)]
