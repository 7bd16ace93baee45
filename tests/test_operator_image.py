"""The operator image's Dockerfile agrees with how the Helm chart runs it."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import REPO
from tests.dockerfile import instructions

DOCKERFILE = REPO / "Dockerfile"
VALUES = REPO / "helm" / "workerpool-operator" / "values.yaml"


def test_operator_image_runs_the_operator_as_the_chart_expects() -> None:
    steps = instructions(DOCKERFILE.read_text())
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) == 2 and all("slim" in f for f in froms)  # multi-stage on slim bases
    assert any(op == "COPY" and arg.startswith("--from=build") for op, arg in steps)

    user = [arg for op, arg in steps if op == "USER"][-1]
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match is not None and match.group(1) != "0", "a numeric non-root user"
    security = yaml.safe_load(VALUES.read_text())["podSecurity"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(match.group(1)), int(match.group(2)))

    entrypoint = json.loads([arg for op, arg in steps if op == "ENTRYPOINT"][-1])  # exec form
    assert entrypoint == ["workerpool-operator"]
    command = json.loads([arg for op, arg in steps if op == "CMD"][-1])
    assert command[0] == "run"
    installs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "pip install ." in installs and "[worker]" not in installs, "the operator needs no Celery"
