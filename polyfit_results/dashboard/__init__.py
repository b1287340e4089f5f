"""``polyfit dashboard``: a read-only web application over the results database. The sweep
list, updated live while sweeps train; a sweep's progress, best jobs, interactive charts (fits
with residuals, loss curves, lr x degree maps) and its job table, filtered, sorted and
paginated in SQL; a job's settings, formula, curve and outcome; two sweeps side by side.

Flask (``app``: the factory and what keeps it safe; ``views``: the pages and the JSON they
fetch), Jinja templates with autoescaping, plotly.js from the ``plotly`` package (no CDN:
nothing is loaded from the internet), reads written on SQLAlchemy Core (``data``) and figures
built on the server (``charts``). An optional extra: ``pip install 'polyfit[dashboard]'``::

    from polyfit_results.dashboard import create_app
    app = create_app("sqlite:///polyfit.sqlite")   # a WSGI app; `polyfit dashboard` serves it
"""

from polyfit_results.dashboard.app import create_app

__all__ = ["create_app"]
