"""The dashboard's Flask application and what keeps it safe.

- It only reads: the one engine is made by ``store.reader.open_results`` (SQLite opened
  ``mode=ro`` with ``query_only``, PostgreSQL in read-only transactions), so a foreign or
  missing file is refused before anything is served and nothing is ever created or changed.
- Everything it shows is escaped: Jinja autoescaping in the templates, ``textContent`` in the
  page's script, escaped text in the charts; and a Content-Security-Policy lets only the app's
  own script files run (no inline script), so a sweep name like ``<script>...`` is text twice
  over.
- A token, when set, is asked of every request: ``Authorization: Bearer TOKEN``, or
  ``?token=TOKEN`` once, which sets a cookie (HttpOnly, SameSite=Strict; it holds an HMAC of
  the token, not the token) and redirects to the same page without it. Compared in constant
  time. The command line refuses to bind anything but loopback without a token unless told
  ``--insecure-public``.
- A request made by another site's page (``Sec-Fetch-Site``: an ``<img>``, a script's fetch)
  is refused before any work; every query argument is bounded (``params``), so no request
  costs more than a page's worth of work.
- On loopback, requests must name a loopback host (localhost, 127.x.y.z, [::1]), so a web page
  whose DNS name is rebound to 127.0.0.1 cannot read the dashboard. (Flask's ``TRUSTED_HOSTS``
  would do it but cannot name an IPv6 address.)
- URLs are shown through ``store.redact.redact_url``; errors are one line, never a traceback.

The charting library is plotly.js, served from the ``plotly`` package's own copy: the pages
load nothing from the internet."""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import ipaddress
import re
from pathlib import Path
from urllib.parse import urlencode

from flask import Flask, Response, current_app, redirect, render_template, request, send_file
from werkzeug.exceptions import HTTPException, SecurityError

from polyfit_results.dashboard.views import EngineHolder, bp
from store.db import StoreError
from store.reader import open_results
from store.redact import redact_url, remember_secrets

#: The cookie that carries proof of the token after a ``?token=`` visit.
COOKIE = "polyfit_dashboard"
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::\d{1,5})?")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def plotly_js() -> Path:
    """plotly.js as the ``plotly`` Python package ships it (ImportError without plotly)."""
    path = Path(str(importlib.resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise ImportError(f"the plotly package has no {path.name}", name="plotly")
    return path


def create_app(db_url: str, *, token: str | None = None, loopback: bool = True,
               refresh_s: float = 2.0) -> Flask:
    """The dashboard over the results database at ``db_url``, read-only. ``token``: asked of
    every request (None: none asked). ``loopback``: the server listens on loopback only, so
    requests must name a loopback host. ``refresh_s``: seconds between the pages' live
    updates."""
    remember_secrets(db_url)
    script = plotly_js()
    engine = open_results(db_url)  # refuses what is not a polyfit results database
    app = Flask(__name__, static_url_path="/assets")
    app.config.update(
        POLYFIT_TOKEN=token or None,
        POLYFIT_DB_SHOWN=redact_url(db_url),
        POLYFIT_REFRESH_MS=int(refresh_s * 1000),
        POLYFIT_PLOTLY_JS=script,
        POLYFIT_LOOPBACK=loopback,
    )
    app.json.sort_keys = False
    app.extensions["polyfit"] = EngineHolder(engine)
    app.register_blueprint(bp)
    app.add_url_rule("/assets/plotly.min.js", "plotly_js", _send_plotly_js)
    app.before_request(_refuse_cross_site)
    app.before_request(_require_loopback_host)
    app.before_request(_require_token)
    app.after_request(_secure_headers)
    app.register_error_handler(StoreError, _store_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"polyfit-dashboard-cookie", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def is_loopback_host(host: str) -> bool:
    """Whether a Host header (``name[:port]``, ``[v6]:port``) names this machine's loopback."""
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return False
    name = match.group(1)
    if name in ("localhost", "[::1]"):
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _refuse_cross_site() -> Response | None:
    """A request that another site's page makes (an ``<img>``, a ``fetch``, a form) is refused
    before any work, as the browser's ``Sec-Fetch-Site`` tells; following a link here (a
    top-level navigation) and requests by the dashboard's own pages are served."""
    site = request.headers.get("Sec-Fetch-Site", "none")
    if site in ("same-origin", "none") or (
            request.headers.get("Sec-Fetch-Mode") == "navigate"
            and request.headers.get("Sec-Fetch-Dest", "document") == "document"):
        return None
    return Response("Forbidden: this dashboard serves its own pages only, not other sites'\n",
                    403, mimetype="text/plain")


def _require_loopback_host() -> Response | None:
    if current_app.config["POLYFIT_LOOPBACK"] and not is_loopback_host(request.host):
        return Response("Bad Request: this dashboard answers to loopback host names only\n",
                        400, mimetype="text/plain")
    return None


def _require_token() -> Response | None:
    token = current_app.config["POLYFIT_TOKEN"]
    if token is None:
        return None
    given = request.args.get("token")
    if given is not None and _same(given, token):
        rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        response = redirect(request.path + ("?" + urlencode(rest) if rest else ""))
        response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="Strict",
                            secure=request.is_secure)
        return response
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer ") and _same(auth[len("Bearer "):], token):
        return None
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and _same(cookie, cookie_value(token)):
        return None
    # Nothing about the database (its user, host, port, name) to whoever lacks the token.
    return _page(401, "This dashboard asks for its token: open it once as /?token=TOKEN "
                      "(or send Authorization: Bearer TOKEN).", db_shown=None)


def _secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if not request.path.startswith("/assets/"):
        response.headers["Cache-Control"] = "no-store"  # live data, and maybe a token's
    return response


def _page(status: int, message: str, **context) -> tuple[str, int]:
    return render_template("error.html", status=status, message=message, **context), status


def _store_error(e: StoreError):
    return _page(503, f"the results database cannot be read: {redact_url(str(e))}")


def _http_error(e: HTTPException):
    if isinstance(e, SecurityError):  # a malformed Host: no URL can be built for it
        return Response(f"Bad Request: {e.description}\n", 400, mimetype="text/plain")
    if request.path.startswith("/api/"):
        return {"error": e.description}, e.code or 500
    return _page(e.code or 500, e.description or e.name)


def _send_plotly_js() -> Response:
    return send_file(current_app.config["POLYFIT_PLOTLY_JS"], mimetype="text/javascript",
                     max_age=86400, conditional=True, etag=True)
