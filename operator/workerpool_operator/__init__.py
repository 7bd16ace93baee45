"""workerpool-operator: run and autoscale Celery workers on Kubernetes.

The package root stays import-light on purpose: the worker entrypoint imports
``workerpool_operator.worker`` and must not pull in kopf or the Kubernetes client.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("workerpool-operator")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

API_GROUP = "workerpool.dev"
API_VERSION = "v1alpha1"
PLURAL = "workerpools"
KIND = "WorkerPool"

__all__ = ["API_GROUP", "API_VERSION", "KIND", "PLURAL", "__version__"]
