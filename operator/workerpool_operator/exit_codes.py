"""The exit codes of the ``workerpool-operator`` command: one convention for every subcommand (``run``, ``local``,
``demo``, ``simulate``), listed in each one's ``--help``. What went wrong is always one line on stderr, never a
traceback. (``workerpool-worker`` in the worker image has its own codes, one per kind of bad configuration, see
``worker/config.py``; its 2 means the same: a bad setting.)"""

from __future__ import annotations

OK = 0
FAILED = 1  # the command ran and failed: workers that cannot start, tasks the demo did not see complete
BAD_INPUT = 2  # a usage error, a file that cannot be read or is not valid (WorkerPool, trace, kubeconfig), a setting
UNAVAILABLE = 3  # what the command needs is not there: the API server does not answer or serves no WorkerPools,
# redis-server is not installed

EPILOG = (
    "exit codes: 0 done; 1 failed while running; 2 bad input (usage, a file that cannot be read or is not valid, "
    "a bad setting); 3 something needed is unavailable (the Kubernetes API server, the WorkerPool CRD, "
    "redis-server)"
)
