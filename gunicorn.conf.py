"""gunicorn reads this file from the working directory: the web process's settings, kept in
cmw/webserver.py (which ``gunicorn -c python:cmw.webserver`` reads from anywhere).
Command-line options still win over anything set here."""

from cmw.webserver import child_exit, on_starting, pre_fork, threads, worker_class

__all__ = ["child_exit", "on_starting", "pre_fork", "threads", "worker_class"]
