"""``workerpool-operator record``: a trace of real traffic from a live broker, for ``simulate``.

Pure: ``arrivals.py`` (when received tasks entered the queue), ``task_events.py`` (tasks from Celery's event
stream), ``report_estimate.py`` (tasks estimated from the worker reports), ``outcome.py`` (which source, and the
header), ``trace_csv.py`` (the CSV). I/O: ``celery_events.py`` (Celery's event receiver and remote control).
Wiring: ``recording.py`` (the command, the polling loop, the progress line).
"""
