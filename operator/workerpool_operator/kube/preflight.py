"""What ``workerpool-operator run`` checks before it starts kopf: a configuration to reach a cluster with, an API
server that answers, and the WorkerPool resource served by it. Each failure is one line for the user.

Why before kopf: kopf reports the same failures late and loudly. An unreadable kubeconfig was a 60-frame
traceback; an API server that does not answer took 56 s of "Request attempt #1/9 ... #9/9" and then several
tracebacks; and an operator started before its CRD (a fresh install that applies the CRD after the chart,
``crds.install=false``, an API server still starting) ran healthy and served nothing, for good in namespaced mode:
kopf resolves resources once at start when it may not watch CRDs ("Unresolved resources cannot be served").

So ``run`` waits a little for the WorkerPool resource (``crd_wait``, 15 s: a CRD applied by the same
``helm install`` is served within it), then exits with code 3 and a line that says what to install. Its pod
restarts (with Kubernetes' back-off) and serves pools as soon as the CRD exists, in both modes, the same way; the
wait stays shorter than the chart's liveness allowance (the health endpoint starts with kopf).

Once kopf runs, a server that goes away is kopf's to retry: one line per attempt, no traceback.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import kubernetes
import urllib3
import yaml

from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.kube.api import ApiError, KubeApi, NoClusterConfiguration, load_configuration

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0  # seconds for the API server's first answer
CRD_POLL = 1.0  # seconds between two looks at the discovery while waiting for the CRD
CRD_NAME = f"{PLURAL}.{API_GROUP}"


class BadConfiguration(Exception):
    """No usable configuration to reach a cluster: the user's to fix (exit code 2)."""


class ClusterUnavailable(Exception):
    """The cluster cannot be used now: the API server does not answer, or does not serve WorkerPools (exit 3)."""


def kubeconfig_paths(environ: Mapping[str, str]) -> list[Path]:
    """The kubeconfig files the client reads: ``KUBECONFIG`` (a list, as kubectl reads it), else ~/.kube/config."""
    raw = environ.get("KUBECONFIG") or "~/.kube/config"
    return [Path(part).expanduser() for part in raw.split(os.pathsep) if part]


def cluster_configuration(environ: Mapping[str, str] | None = None) -> kubernetes.client.Configuration:
    """The in-cluster service account, else the kubeconfig; :class:`BadConfiguration` with one line otherwise."""
    env = os.environ if environ is None else environ
    paths = kubeconfig_paths(env)
    named = ", ".join(str(p) for p in paths)
    in_pod = bool(env.get("KUBERNETES_SERVICE_HOST"))
    if not in_pod and not any(path.exists() for path in paths):
        raise BadConfiguration(
            f"no Kubernetes configuration: not in a pod with a service account, and the kubeconfig {named} "
            "does not exist; set KUBECONFIG or run in a pod"
        )
    try:
        return load_configuration()
    except NoClusterConfiguration as error:
        raise BadConfiguration(str(error)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise BadConfiguration(f"the kubeconfig {named} is not valid YAML{where}: {problem}") from None


def connection_problem(error: BaseException) -> str:
    """A connection failure in a few words: ``connection refused``, ``timed out``, the TLS error."""
    reason = getattr(error, "reason", None) or error  # urllib3's MaxRetryError wraps the cause
    text = str(reason)
    if isinstance(reason, urllib3.exceptions.NewConnectionError) and ": " in text:
        text = text.rsplit(": ", 1)[1]  # "... Failed to establish a new connection: [Errno 111] Connection refused"
    elif isinstance(reason, urllib3.exceptions.ConnectTimeoutError | urllib3.exceptions.ReadTimeoutError):
        text = "timed out"
    return text.removeprefix("[Errno 111] ").strip() or type(reason).__name__


def served_resources(api: KubeApi, timeout: float) -> set[str] | None:
    """The resources of the WorkerPool API group and version, or ``None`` when the API server does not serve it."""
    found = api.get(f"/apis/{API_GROUP}/{API_VERSION}", timeout=timeout)
    if found is None:
        return None
    return {str(resource.get("name")) for resource in found.get("resources") or ()}


def check_cluster(
    configuration: kubernetes.client.Configuration,
    crd_wait: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once the API server at ``configuration.host`` answers and serves WorkerPools; raise
    :class:`ClusterUnavailable` with one line if it does not answer, or does not serve them within ``crd_wait``."""
    server = configuration.host
    configuration.retries = False  # one attempt per look (this configuration is the check's): the wait retries
    api = KubeApi(kubernetes.client.ApiClient(configuration), timeout=PROBE_TIMEOUT)
    deadline = clock() + crd_wait
    waiting = False
    try:
        while True:
            try:
                resources = served_resources(api, PROBE_TIMEOUT)
            except urllib3.exceptions.HTTPError as error:
                raise ClusterUnavailable(
                    f"the Kubernetes API server at {server} does not answer: {connection_problem(error)}"
                ) from None
            except kubernetes.client.ApiException as error:  # the client's wrapping of a TLS failure
                raise ClusterUnavailable(
                    f"the Kubernetes API server at {server} does not answer: {str(error.reason).strip()}"
                ) from None
            except ApiError as error:
                raise ClusterUnavailable(f"the Kubernetes API server at {server} refused discovery: {error}") from None
            if resources is not None and PLURAL in resources:
                if waiting:
                    logger.info("The WorkerPool CRD (%s) is served now: starting", CRD_NAME)
                return
            if clock() >= deadline:
                raise ClusterUnavailable(
                    f"the API server at {server} does not serve WorkerPools ({API_GROUP}/{API_VERSION}): the CRD "
                    f"{CRD_NAME} is not installed (waited {crd_wait:g} s). Install it (the chart does with "
                    "crds.install=true; or kubectl apply --server-side -f crds/); exiting so that the operator "
                    "starts again, and serves pools, once it exists"
                )
            if not waiting:
                waiting = True
                logger.warning(
                    "The API server does not serve WorkerPools yet (CRD %s): waiting up to %g s", CRD_NAME, crd_wait
                )
            sleep(CRD_POLL)
    finally:
        api.close()
