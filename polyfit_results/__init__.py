"""The read side of polyfit: what a sweep produced, for people and programs. Progress and the
best jobs (``queries``), tables in text, CSV and JSON (``report``), the summary figure
(``plot``) and pandas frames for notebooks (``api``). It reads the results database through
``store`` (its read-only door) and draws fitted curves through ``polyfit_models``; it knows
nothing of queues, workers or scheduling::

    from polyfit_results.api import jobs_frame, loss_curve_frame
"""
