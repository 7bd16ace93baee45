# The operator image: `workerpool-operator run` (kopf) with the project's base dependencies.
# Build from the repository root:  docker build -t workerpool-operator .
# The Helm chart (helm/workerpool-operator) runs it as user 10001 with a read-only root filesystem.
ARG PYTHON_VERSION=3.11

# --- build: install the project into a virtualenv ---------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/venv/bin/pip install .

# --- runtime: the virtualenv and a numeric non-root user ---------------------------------------------------
FROM python:${PYTHON_VERSION}-slim
RUN groupadd --gid 10001 operator \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin operator
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# Exec form: the operator is PID 1's only process and gets SIGTERM directly (kopf stops gracefully on it).
ENTRYPOINT ["workerpool-operator"]
CMD ["run", "--log-format=json", "--liveness=http://0.0.0.0:8080/healthz"]
