"""What a new user reads first agrees with what the tools do: the README's and the Makefile's prerequisites, and
where the README sends a user whose CRD came before the chart."""

from __future__ import annotations

import re

from tests.conftest import REPO


def prerequisites(target: str) -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    match = re.search(rf"^{target}:([^#\n]*)", makefile, re.MULTILINE)
    assert match, target
    return set(match.group(1).split())


def test_the_readme_and_the_makefile_agree_on_nodejs() -> None:
    readme = " ".join((REPO / "README.md").read_text().split("## Why not KEDA", 1)[0].split())
    header = " ".join(line.lstrip("# ") for line in (REPO / "Makefile").read_text().splitlines()[:4])
    # Node.js is for the targets that use the npm tools, and only for them.
    assert "node-tools" in prerequisites("test") | prerequisites("lint")
    assert "node-tools" not in prerequisites("demo") | prerequisites("venv") | prerequisites("redis")
    assert "`make test` also needs Node.js with npm, `make demo` does not" in readme
    assert "`make test`, `lint` and `chart-readme` also need Node.js with npm" in header
    assert "`make demo` does not" in header


def test_the_readme_warns_of_a_crd_applied_before_the_chart() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "invalid ownership metadata" in readme and "crds.install=false" in readme
    operations = (REPO / "docs" / "operations.md").read_text()
    assert "meta.helm.sh/release-name=workerpool-operator" in operations.split("## Upgrade", 1)[0], "in Install"


def test_the_security_section_says_a_workerpool_is_as_powerful_as_a_deployment() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    security = " ".join(operations.split("## Security", 1)[1].split("\n## ", 1)[0].split())
    assert "as powerful as creating Deployments there" in security
    assert "`view` reads WorkerPools, only `edit` and `admin` (which write Deployments) write them" in security
