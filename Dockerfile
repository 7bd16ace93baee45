# The project's two images, from one file (build from the repository root):
#   docker build --target operator -t workerpool-operator .   # `workerpool-operator run` (kopf); the Helm chart's
#   docker build --target worker   -t workerpool-worker .     # Celery run by `workerpool-worker`; FROM it your app
# Both run as user 10001 (the chart and the rendered worker pods add a read-only root filesystem).
ARG PYTHON_VERSION=3.11

# --- what both images share: the Python base, the virtualenv on PATH, one numeric non-root user ------------
FROM python:${PYTHON_VERSION}-slim AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --gid 10001 workerpool \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin workerpool

# --- build: the project's source in a fresh virtualenv; each image installs what it needs ----------------------
FROM base AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY operator ./operator

# The operator's scaling engine compiled to C (setup.py: mypyc, same source, same decisions, about 2.3 times as
# fast); the compiler stays in this stage.
FROM build AS build-operator
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN WORKERPOOL_OPERATOR_COMPILE=1 pip install . \
    && python -c "import sys, workerpool_operator.engine; assert sys.modules['workerpool_operator.engine.decide'].__file__.endswith('.so')"

FROM build AS build-worker
RUN pip install ".[worker]"

# --- the worker image: tini as PID 1 forwards SIGTERM to workerpool-worker (a warm Celery shutdown) --------------
FROM base AS worker
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /app /tmp/workerpool \
    && chown 10001:10001 /app /tmp/workerpool
COPY --from=build-worker /opt/venv /opt/venv
ENV PYTHONPATH=/app \
    WORKERPOOL_STATE_DIR=/tmp/workerpool
# User code goes in /app (the working directory, on PYTHONPATH): see worker-image/example-app/Dockerfile.
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--", "workerpool-worker"]

# --- the operator image (the default target): no Celery, exec form, so kopf gets SIGTERM directly -------------
FROM base AS operator
COPY --from=build-operator /opt/venv /opt/venv
USER 10001:10001
ENTRYPOINT ["workerpool-operator"]
CMD ["run", "--log-format=json", "--liveness=http://0.0.0.0:8080/healthz"]
