"""gunicorn settings for dpx (scripts/run and the container use this file).

Operations:

- Logs: every line on standard error is a JSON object (``service.observability.logs``);
  access lines carry the request id of the ``X-Request-ID`` response header.
- Metrics: ``GET /metrics``; each worker writes its counters to files under
  ``PROMETHEUS_MULTIPROC_DIR`` (default ``$DPX_DATA_DIR/prometheus``; its ``*.db`` files
  are deleted when the master starts) and a scrape sums them over all workers.
- ``dpx reload`` (or ``kill -HUP`` to the pid in ``$DPX_DATA_DIR/gunicorn.pid``) reloads
  the policy files and reports the outcome the master writes to
  ``$DPX_DATA_DIR/policy-reload.json``. The app is preloaded in the master,
  so the master itself reloads them (``on_reload``): a valid set is put in force (one audit
  entry) and the new workers that HUP starts fork with it; an invalid set is refused,
  logged as ``file:field: reason`` lines, and the new workers keep the last good set.
  Workers therefore never load policies themselves and can never crash-loop on a bad file.
  ``preload_app`` must stay on for this.
"""

import gc
import logging
import os
from pathlib import Path
from typing import Any

# Before anything imports prometheus_client: the variable chooses its multiprocess mode.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(Path(os.environ.get("DPX_DATA_DIR") or "var") / "prometheus")
)

from flask import Flask  # noqa: E402

from service.config import Settings  # noqa: E402
from service.observability.logs import ACCESS_LOG_FORMAT, logging_config  # noqa: E402

bind = os.environ.get("DPX_BIND", "127.0.0.1:8000")
# `dpx reload` finds the master through this file.
pidfile = str(Settings.from_env().pid_file)
workers = int(os.environ.get("DPX_WORKERS", "2"))
# Threads let a worker overlap one request's fsync with another's work and keep client
# connections alive; SQLite writers still queue on BEGIN IMMEDIATE, PostgreSQL on row locks.
worker_class = "gthread"
threads = int(os.environ.get("DPX_THREADS", "4"))
keepalive = 5
timeout = 60
graceful_timeout = 20
accesslog = "-"
errorlog = "-"
access_log_format = ACCESS_LOG_FORMAT
# Builds the access fields of ACCESS_LOG_FORMAT only (other atoms print "-"), and, being a
# logger class of its own, keeps gunicorn from switching to its statsd logger: dpx's metrics
# are at /metrics.
logger_class = "service.observability.logs.AccessLogger"
logconfig_dict = logging_config(os.environ.get("DPX_LOG_LEVEL", "info"))
# gunicorn's control socket (25.1+) would be a second admin interface, at a per-user path
# that every gunicorn of the same user shares; dpx is administered with signals and dpx.
control_socket_disable = True
# Import the app once in the master: workers fork with policies and keyring already loaded.
preload_app = True

log = logging.getLogger("dpx.gunicorn")
# Python warnings become log records too, so that standard error holds JSON lines only.
logging.captureWarnings(True)


def on_starting(server: Any) -> None:
    """Start from empty metric files: counts of an earlier run are not this run's."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def when_ready(server: Any) -> None:
    """Make the pidfile private like every other file in the data directory: gunicorn
    writes it 0644 whatever the umask."""
    os.chmod(pidfile, 0o600)


def post_fork(server: Any, worker: Any) -> None:
    """Drop database connections inherited from the master; never share them across processes.

    Then freeze what the worker inherited (the app, policies, keyring, OpenDP, Polars): it
    lives as long as the worker, so the garbage collector stops scanning it on every
    collection, which took about a tenth of a release's time.
    """
    _app(server).extensions["dpx.database"].engine.dispose(close=False)
    gc.freeze()


def on_reload(server: Any) -> None:
    """SIGHUP: reload the policies in the master before gunicorn forks the new workers."""
    from service.policy.reload import reload_policies

    app = _app(server)
    settings = app.config["DPX_SETTINGS"]
    try:
        exchange = app.extensions["dpx.exchange"]
        outcome = reload_policies(exchange, settings.policy_dir, exchange.all_spent())
        outcome.write(settings.reload_status_file)
    except Exception:  # an exception here would stop the master, and with it the service
        log.exception("policy reload failed; keeping the policies in force")
    finally:
        # The reload wrote an audit entry: close that connection before workers fork.
        app.extensions["dpx.database"].dispose()


def worker_exit(server: Any, worker: Any) -> None:
    """Write the refusal counts this worker has not yet put in the audit log."""
    try:
        _app(server).extensions["dpx.exchange"].refusals.flush()
    except Exception:  # a worker that cannot write any more must still exit
        log.exception("could not write the last refusal counts")


def child_exit(server: Any, worker: Any) -> None:
    """Let /metrics forget the live gauges of a worker that exited (its counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _app(server: Any) -> Flask:
    # With preload_app the master has already built the app; this returns that very object.
    app: Flask = server.app.wsgi()
    return app
