"""The operator image's Dockerfile agrees with how the Helm chart runs it."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import REPO
from tests.dockerfile import image, stages

DOCKERFILE = REPO / "Dockerfile"
VALUES = REPO / "helm" / "workerpool-operator" / "values.yaml"


def test_operator_image_runs_the_operator_as_the_chart_expects() -> None:
    text = DOCKERFILE.read_text()
    steps = image(text, "operator")
    assert list(stages(text))[-1] == "operator", "a plain `docker build .` builds the operator image"
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) >= 2 and all("slim" in f for f in froms if "python" in f)  # multi-stage on slim bases
    assert any(op == "COPY" and arg.startswith("--from=build-operator") for op, arg in steps)

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
    assert "WORKERPOOL_OPERATOR_COMPILE=1 pip install ." in installs, "the engine compiled (setup.py)"
    # no compiler shipped: the image takes only the build stage's virtualenv
    operator_stage = stages(text)["operator"]
    assert [arg for op, arg in operator_stage if op == "COPY"] == ["--from=build-operator /opt/venv /opt/venv"]
    assert not [arg for op, arg in operator_stage if op == "RUN"]


def test_the_two_images_share_one_build_stage() -> None:
    text = DOCKERFILE.read_text()
    named = stages(text)
    assert {"operator", "worker"} <= set(named)
    copies = [arg for steps in named.values() for op, arg in steps if op == "COPY" and not arg.startswith("--from")]
    assert copies == ["pyproject.toml README.md setup.py ./", "operator ./operator"], (
        "the source goes in once, in one build stage"
    )
    assert named["build-worker"][0] == ("FROM", "build AS build-worker")
    assert named["build-operator"][0] == ("FROM", "build AS build-operator")
