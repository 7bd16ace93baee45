"""``from-keda``: the example ScaledObjects of KEDA's docs (tests/keda/, written from them) become WorkerPools the CRD
accepts, with every setting carried over or listed with its reason, and no secret in the output.

The output uses three spec fields built with issue 24's Kubernetes side (``queues[].scaleTargetRef``,
``queues[].celeryQueues``, ``scaling.mode``). ``test_output_is_accepted_by_the_crd`` validates the whole output
against the real CRD and model; ``test_output_is_valid_apart_from_the_agreed_fields`` checks that the rest of the
conversion would stand without them too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import crd_rules
from workerpool_operator import cli
from workerpool_operator.deployment_import import celery_command
from workerpool_operator.engine import QueueState, decide
from workerpool_operator.keda_import import Options, convert, select_inputs
from workerpool_operator.observation import QueueObservation
from workerpool_operator.sim.keda_model import KedaSettings, KedaState, keda_poll
from workerpool_operator.spec import WorkerPool

KEDA = Path(__file__).parent / "keda"
DEPLOYMENT = KEDA / "celery-deployment.yaml"
APP = ["--app", "votes.tasks:app"]

# (fixture, extra arguments): every example, and the Celery fleet both ways.
CASES = [
    ("redis-lists-trigger-auth.yaml", APP),
    ("redis-lists-trigger-spec.yaml", APP),
    ("redis-lists-address-from-env.yaml", []),
    ("redis-lists-tls.yaml", APP),
    ("scaledobject-spec.yaml", APP),
    ("celery-two-queues.yaml", ["--deployment", str(DEPLOYMENT)]),
    ("celery-two-queues.yaml", ["--deployment", str(DEPLOYMENT), "--render"]),
]


def run_from_keda(capsys: pytest.CaptureFixture[str], fixture: str, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["from-keda", "-f", str(KEDA / fixture), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def converted(capsys: pytest.CaptureFixture[str], fixture: str, *extra: str) -> tuple[dict[str, Any], str, str]:
    code, out, err = run_from_keda(capsys, fixture, *extra)
    assert code == 0, err
    pool = yaml.safe_load(out)
    assert isinstance(pool, dict)
    return pool, out, err


def without_agreed_fields(pool: dict[str, Any]) -> dict[str, Any]:
    """The pool as today's schema knows it: the agreed fields taken out (a stand-in template where a queue
    named its Deployment instead), so the rest of the conversion is checked now."""
    pool = copy.deepcopy(pool)
    spec = pool["spec"]
    spec["scaling"].pop("mode")
    for queue in spec["queues"]:
        queue.pop("celeryQueues", None)
        if queue.pop("scaleTargetRef", None) is not None:
            spec.setdefault("template", {"image": "stand-in:1"})
    return pool


@pytest.mark.parametrize(("fixture", "extra"), CASES)
def test_output_is_accepted_by_the_crd(capsys: pytest.CaptureFixture[str], fixture: str, extra: list[str]) -> None:
    pool, _, _ = converted(capsys, fixture, *extra)
    assert crd_rules.validate(pool) == []
    parsed = WorkerPool.from_object(pool)
    assert parsed.name == pool["metadata"]["name"]


@pytest.mark.parametrize(("fixture", "extra"), CASES)
def test_output_is_valid_apart_from_the_agreed_fields(
    capsys: pytest.CaptureFixture[str], fixture: str, extra: list[str]
) -> None:
    pool, out, _ = converted(capsys, fixture, *extra)
    assert out.startswith("# WorkerPool converted from KEDA ScaledObject ")
    assert pool["spec"]["scaling"]["mode"] == "Shadow"
    today = without_agreed_fields(pool)
    assert crd_rules.validate(today) == []
    WorkerPool.from_object(today)


def test_credentials_from_a_trigger_authentication_become_a_secret_to_create(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pool, out, err = converted(capsys, "redis-lists-trigger-auth.yaml", *APP)
    assert pool["metadata"] == {"name": "redis-scaledobject", "namespace": "my-project"}
    assert pool["spec"]["broker"] == {"urlFrom": {"secretKeyRef": {"name": "redis-scaledobject-broker", "key": "url"}}}
    (queue,) = pool["spec"]["queues"]
    assert queue == {"name": "mylist", "scaleTargetRef": {"name": "votes"}, "minReplicas": 0, "maxReplicas": 100}
    assert pool["spec"]["scaling"] == {"mode": "Shadow", "targetPerReplica": 10, "activationBacklog": 1}
    for text in (out, err):  # where the password is, and how to make the Secret; never the password itself
        assert "Secret votes-db-secret, key redis_password (TriggerAuthentication keda-trigger-auth-redis-secret)" in (
            " ".join(text.replace("#", " ").split())
        )
        assert "redis://USERNAME:PASSWORD@localhost:6379/0" in text
        assert "YWRtaW4=" not in text and "admin" not in text


def test_activation_is_one_above_keda_and_both_wake_at_the_same_length(capsys: pytest.CaptureFixture[str]) -> None:
    """KEDA is active while the list is longer than activationListLength; the WorkerPool wakes at
    activationBacklog. With listLength 5 and activationListLength 5, both stay at zero for 5 waiting tasks and
    wake for 6: the real engine against the simulator's KEDA model."""
    pool, _, _ = converted(capsys, "redis-lists-trigger-spec.yaml", *APP)
    assert pool["spec"]["scaling"]["activationBacklog"] == 6
    policy = WorkerPool.from_object(without_agreed_fields(pool)).spec.policy_for("mylist")
    keda = KedaSettings.like(policy)
    assert (keda.list_length, keda.activation_list_length, keda.min_replicas, keda.max_replicas) == (5, 5, 0, 100)
    for backlog, awake in ((5, False), (6, True)):
        ours, _ = decide(QueueObservation("mylist", backlog=backlog), QueueState(), policy, now=1000.0)
        theirs, _ = keda_poll(backlog, 0, KedaState(), keda, now=1000.0)
        assert (ours.desired_replicas > 0, theirs.desired_replicas > 0) == (awake, awake), backlog


def test_address_and_password_are_looked_up_in_the_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    pool, out, _ = converted(capsys, "redis-lists-address-from-env.yaml")
    assert pool["spec"]["app"] == "jobs.worker:app"  # celery -A in the Deployment's args
    (queue,) = pool["spec"]["queues"]
    assert (queue["concurrency"], queue["prefetchMultiplier"]) == (4, 4)  # --concurrency=4, Celery's default
    text = " ".join(out.replace("#", " ").split())
    assert "redis://:PASSWORD@redis.jobs.svc:6379/0" in text  # REDIS_HOST's value
    assert "Secret jobs-redis, key password (the Deployment's REDIS_PASSWORD)" in text


def test_tls_and_ca_from_the_trigger_authentication(capsys: pytest.CaptureFixture[str]) -> None:
    pool, out, _ = converted(capsys, "redis-lists-tls.yaml", *APP)
    broker = pool["spec"]["broker"]
    assert broker["caFrom"] == {"secretKeyRef": {"name": "redis-tls-secret", "key": "ca.crt"}}
    assert "rediss://:PASSWORD@redis.my-project.svc:6380/0" in out


def test_every_spec_setting_is_carried_or_listed(capsys: pytest.CaptureFixture[str]) -> None:
    pool, out, err = converted(capsys, "scaledobject-spec.yaml", *APP)
    spec = pool["spec"]
    assert spec["broker"] == {"url": "redis://redis.shop.svc:6379/0"}  # nothing secret: inline
    (queue,) = spec["queues"]
    assert (queue["minReplicas"], queue["maxReplicas"]) == (0, 100)  # idleReplicaCount 0: it scales to zero
    assert spec["scaling"] == {
        "mode": "Shadow",
        "targetPerReplica": 20,
        "activationBacklog": 3,
        "pollIntervalSeconds": 30,
        "idleSecondsBeforeZero": 300,
        "fallback": {"failureThreshold": 3, "replicas": 6},
        "paused": True,
    }
    listed = [line for line in err.splitlines() if line.startswith("from-keda: not converted: ")]
    fields = [line.removeprefix("from-keda: not converted: ").split(":")[0] for line in listed]
    assert fields == [
        "spec.triggers[1] (type cpu)",
        "spec.idleReplicaCount (0)",
        "spec.advanced.restoreToOriginalReplicaCount",
        "spec.advanced.horizontalPodAutoscalerConfig",
        "metadata.annotations.scaledobject.keda.sh/transfer-hpa-ownership",
    ]
    comments = out.split("apiVersion:")[0]
    for field in fields:
        assert f"# - {field}:" in comments


def test_several_triggers_make_one_worker_group(capsys: pytest.CaptureFixture[str]) -> None:
    pool, _, err = converted(capsys, "celery-two-queues.yaml", "--deployment", str(DEPLOYMENT))
    spec = pool["spec"]
    assert spec["app"] == "shop.celery:app"  # from `sh -c "exec celery -A shop.celery:app worker ..."`
    assert spec["broker"] == {"urlFrom": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}}  # the workers'
    (queue,) = spec["queues"]
    assert queue == {
        "name": "shop-worker",
        "celeryQueues": ["normal", "low"],
        "scaleTargetRef": {"name": "shop-worker"},
        "pool": "gevent",
        "concurrency": 8,
        "prefetchMultiplier": 1,
        "minReplicas": 0,
        "maxReplicas": 40,
    }
    # listLength 16 and 32: the smaller; activationListLength 0 and 10: wake as early as the earlier trigger
    assert (spec["scaling"]["targetPerReplica"], spec["scaling"]["activationBacklog"]) == (16, 1)
    assert "the smallest is kept" in err
    assert "not converted" not in err  # the Deployment keeps its own command: nothing of it is left out


def test_render_takes_the_pod_template(capsys: pytest.CaptureFixture[str]) -> None:
    pool, _, err = converted(capsys, "celery-two-queues.yaml", "--deployment", str(DEPLOYMENT), "--render", "--active")
    spec = pool["spec"]
    assert spec["scaling"]["mode"] == "Active"
    (queue,) = spec["queues"]
    assert "scaleTargetRef" not in queue
    template = spec["template"]
    assert template["image"] == "registry.example/shop-worker:1.4.2"
    assert template["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    assert [e["name"] for e in template["env"]] == ["DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL"]
    assert (template["serviceAccountName"], template["terminationGracePeriodSeconds"]) == ("shop", 120)
    assert template["podLabels"] == {"tier": "backend"}  # not app: the old Deployment selects by it
    assert template["extraArgs"] == ["-O", "fair"]
    assert "statsd-exporter" in err and "livenessProbe" in err
    assert "not converted: celery worker -l info: " in err  # the entrypoint runs the worker now


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda so: so["spec"].update(triggers=[{"type": "cpu", "metadata": {"value": "60"}}]), "no redis (list)"),
        (lambda so: so["spec"]["scaleTargetRef"].update(kind="StatefulSet"), "Deployments only"),
        (lambda so: so["spec"].update(minReplicaCount=5, maxReplicaCount=2), "exceeds"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(listLength="ten"), "listLength"),
        (lambda so: so.update(kind="ScaledJob"), "no KEDA ScaledObject"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, message: str
) -> None:
    documents = list(yaml.safe_load_all((KEDA / "redis-lists-trigger-auth.yaml").read_text()))
    change(documents[-1])
    path = tmp_path / "so.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    code = cli.main(["from-keda", "-f", str(path), *APP])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("workerpool-operator from-keda: ") and message in line


def test_the_app_must_come_from_somewhere(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_from_keda(capsys, "redis-lists-trigger-auth.yaml")
    assert (code, out) == (2, "")
    assert "--app" in err


def test_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "pool.yaml"
    code, out, err = run_from_keda(capsys, "redis-lists-tls.yaml", *APP, "-o", str(target))
    assert (code, out) == (0, "")
    assert yaml.safe_load(target.read_text())["kind"] == "WorkerPool"
    assert f"wrote {target}" in err


def test_a_password_in_the_workers_url_is_never_copied() -> None:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    env[1] = {"name": "CELERY_BROKER_URL", "value": "redis://:hunter2@redis.shop.svc:6379/1"}
    documents = list(yaml.safe_load_all((KEDA / "celery-two-queues.yaml").read_text()))
    conversion = convert(select_inputs(documents, [deployment]), Options())
    assert "hunter2" not in repr(conversion)
    assert conversion.pool["spec"]["broker"] == {"url": "redis://redis.shop.svc:6379/1"}
    assert any("plain text" in note for note in conversion.notes)


@pytest.mark.parametrize("command", ["from-keda", "record"])
def test_every_option_has_help_and_the_exit_codes_are_listed(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[index]
    assert [a.option_strings for a in sub._actions if not a.help] == []
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "exit codes: 0 done; 1 failed while running; 2 bad input" in " ".join(capsys.readouterr().out.split())


# --- the Deployment's command line ----------------------------------------------------------------------------


def container(command: list[str] | None = None, args: list[str] | None = None, **env: str) -> dict[str, Any]:
    made: dict[str, Any] = {"name": "worker", "image": "x:1", "env": [{"name": k, "value": v} for k, v in env.items()]}
    if command is not None:
        made["command"] = command
    if args is not None:
        made["args"] = args
    return made


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (
            container(["celery"], ["-A", "shop.celery:app", "worker", "-Q", "a,b", "-c", "8", "-P", "threads"]),
            ("shop.celery:app", ("a", "b"), "threads", 8, None, ()),
        ),
        (
            container(["sh", "-c", "cd /app && celery --app=jobs worker --queues=q --concurrency=3 -O fair; echo"]),
            ("jobs", ("q",), None, 3, None, ("-O", "fair")),
        ),
        (
            container(
                ["python", "-m", "celery"], ["-Ajobs", "worker", "--prefetch-multiplier", "2", "--without-gossip"]
            ),
            ("jobs", (), None, None, 2, ("--without-gossip",)),
        ),
        (
            container(WORKERPOOL_APP="shop:app", WORKERPOOL_QUEUES="x,y", WORKERPOOL_POOL="gevent"),
            ("shop:app", ("x", "y"), "gevent", None, None, ()),
        ),
        (container(["celery", "-A", "shop", "beat"]), None),
        (container(["gunicorn", "shop.wsgi"]), None),
    ],
)
def test_the_celery_command_line_is_read(made: dict[str, Any], expected: tuple[Any, ...] | None) -> None:
    command = celery_command(made)
    if expected is None:
        assert command is None
        return
    assert command is not None
    found = (command.app, command.queues, command.pool, command.concurrency, command.prefetch_multiplier)
    assert (*found, command.extra_args) == expected


def test_a_concurrency_the_pool_cannot_have_is_listed_not_written(capsys: pytest.CaptureFixture[str]) -> None:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    worker = deployment["spec"]["template"]["spec"]["containers"][0]
    worker["args"] = ["exec celery -A shop.celery:app worker -Q normal,low -c 100"]  # prefork: at most 64
    documents = list(yaml.safe_load_all((KEDA / "celery-two-queues.yaml").read_text()))
    conversion = convert(select_inputs(documents, [deployment]), Options())
    (queue,) = conversion.pool["spec"]["queues"]
    assert "concurrency" not in queue and "pool" not in queue
    assert any("--concurrency 100" in item.field and "at most 64" in item.reason for item in conversion.skipped)
    assert crd_rules.validate(without_agreed_fields(conversion.pool)) == []


def test_the_run_shown_in_the_docs_is_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/moving-from-keda.md shows a real run: it must stay the command's output."""
    text = (crd_rules.REPO / "docs" / "moving-from-keda.md").read_text()
    block = text.split("```console\n", 1)[1].split("```", 1)[0]
    prompt, shown = block.split("\n", 1)
    assert prompt == "$ workerpool-operator from-keda -f tests/keda/redis-lists-trigger-auth.yaml --app votes.tasks:app"
    _, out, _ = run_from_keda(capsys, "redis-lists-trigger-auth.yaml", "--app", "votes.tasks:app")
    assert shown == out
