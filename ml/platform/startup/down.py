"""``down``: stop the supervisor, every service's process tree and the embedded PostgreSQL."""

from __future__ import annotations

import psutil

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.platform.startup.services import STOP_TIMEOUT, service_names, services
from ml.platform.startup.supervision import supervisor_pid, supervisor_service
from ml.platform.supervisor import STATE_FILE, WANTED_FILE, say, stop_trees


def stop_supervisor(settings: Settings, timeout: float = 10) -> bool:
    """SIGTERM the supervisor (only it: the services are its children but not its session)."""
    pid = supervisor_pid(settings)
    if not pid:
        return False
    say(f"stopping the supervisor (pid {pid}) so that nothing is restarted")
    try:
        p = psutil.Process(pid)
        p.terminate()
        _, alive = psutil.wait_procs([p], timeout=timeout)
        for q in alive:
            q.kill()
        psutil.wait_procs(alive, timeout=5)
    except psutil.Error:
        pass
    supervisor_service().pid_file(settings).unlink(missing_ok=True)
    return True


def down(settings: Settings | None = None, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop the supervisor, then everything ``up`` started, then the embedded PostgreSQL if
    the platform uses it. Keeps all data. Returns the names of what was stopped."""
    s = settings or get_settings()
    stopped: list[str] = ["supervisor"] if stop_supervisor(s) else []
    (s.run_dir / WANTED_FILE).unlink(missing_ok=True)
    (s.run_dir / STATE_FILE).unlink(missing_ok=True)
    svcs = services(s)
    leaders = {name: pid for name in reversed(service_names(s)) if (pid := svcs[name].pid(s))}
    if leaders:
        stop_trees(leaders, timeout)
        for name in leaders:
            svcs[name].pid_file(s).unlink(missing_ok=True)
            stopped.append(name)
    (s.run_dir / "mlflow.url").unlink(missing_ok=True)
    if not s.database_url:
        if db.stop_embedded_postgres(s):
            say("stopped embedded PostgreSQL (data kept in %s)" % (s.var / "pg"))
            stopped.append("postgres")
    if not stopped:
        say("nothing was running")
    return stopped
