"""``polyfit dashboard``: serves the read-only web dashboard (``polyfit_results.dashboard``)
with waitress. Safe by default: it listens on 127.0.0.1, and refuses any other address unless
every request must carry a token (``--token``, or better ``POLYFIT_DASHBOARD_TOKEN``, which
does not show in the process list) or ``--insecure-public`` says that the network is trusted.
Flask, plotly and waitress are the optional extra ``polyfit[dashboard]``, imported only here:
without them the command says what to install (exit 2)."""

from __future__ import annotations

import ipaddress

import click

from scheduler.cli.group import InputError, cli
from scheduler.cli.helpers import FiniteFloat, pass_settings
from store.redact import redact_url
from worker.settings import Settings

ENV_TOKEN = "POLYFIT_DASHBOARD_TOKEN"
#: A token shorter than this is refused: it would be guessed.
MIN_TOKEN = 16
INSTALL = "pip install 'polyfit[dashboard]'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine reaches (a name other than
    ``localhost`` is not trusted to resolve to one)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_host(host: str) -> str:
    """The address to listen on: an IPv6 address as given, with or without brackets
    (``[::1]`` or ``::1``), goes to the socket bare."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot guard the dashboard, or None."""
    if len(token) < MIN_TOKEN:
        return f"--token must be at least {MIN_TOKEN} characters"
    if any(c.isspace() or not c.isprintable() for c in token):
        return "--token must not hold spaces or control characters"
    return None


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --token (or "
                   f"{ENV_TOKEN}) or --insecure-public.")
@click.option("--port", type=click.IntRange(0, 65535), default=8050, show_default=True,
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--token", envvar=ENV_TOKEN, default=None, metavar="TOKEN",
              help=f"Every request must carry it (open /?token=TOKEN once, or send "
                   f"Authorization: Bearer TOKEN); at least {MIN_TOKEN} characters. Prefer "
                   f"{ENV_TOKEN}: a flag shows in the process list.")
@click.option("--insecure-public", is_flag=True,
              help="Listen on a non-loopback address without a token: anyone who reaches "
                   "the port reads every result.")
@click.option("--refresh", type=FiniteFloat(0.2, 3600), default=2.0, show_default=True,
              help="Seconds between the pages' live updates.")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Requests served at once.")
@pass_settings()
def dashboard(settings: Settings, host, port, token, insecure_public, refresh, threads) -> None:
    """A read-only web dashboard over the results database: sweeps (live), a sweep's best jobs,
    fits, loss curves, lr x degree maps and job table, a job, two sweeps compared."""
    try:
        import waitress

        from polyfit_results.dashboard import create_app
        from polyfit_results.dashboard.app import plotly_js

        plotly_js()
    except ImportError as e:
        missing = e.name or "a dependency"
        raise InputError(f"polyfit dashboard needs {missing} and the rest of the dashboard "
                         f"extra: {INSTALL}") from e
    host = bind_host(host.strip())
    loopback = is_loopback(host)
    problem = None if token is None else token_problem(token)
    if problem is not None:
        raise InputError(f"{problem} (python -c 'import secrets; "
                         "print(secrets.token_urlsafe())' makes one)")
    if not loopback and token is None and not insecure_public:
        raise InputError(f"refusing to listen on {host} without a token: anyone who reaches "
                         f"it could read every result. Set {ENV_TOKEN} (or --token), or pass "
                         "--insecure-public on a network you trust")
    app = create_app(settings.db_url, token=token, loopback=loopback, refresh_s=refresh)
    try:
        server = waitress.create_server(app, host=host, port=port, threads=threads,
                                        ident="polyfit")
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    where = _url(host, server.effective_port)
    guard = ("every request needs the token: open it once as /?token=TOKEN" if token
             else "no token" + ("" if loopback else ": anyone who reaches it reads every "
                                                     "result"))
    click.echo(f"polyfit dashboard on {where} over {redact_url(settings.db_url)} "
               f"(read-only; {guard}; Ctrl-C stops it)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
