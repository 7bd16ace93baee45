"""Beat's and Flower's manifests (pure rendering) and the entrypoint's beat and Flower settings (pure parsing)."""

from __future__ import annotations

from typing import Any

import pytest

from workerpool_operator.kube.beats import duplicate_beats
from workerpool_operator.kube.components import render_components
from workerpool_operator.kube.conditions import beat_condition
from workerpool_operator.kube.render import render_deployments
from workerpool_operator.spec import WorkerPool
from workerpool_operator.worker.config import ConfigError, parse_run_args
from workerpool_operator.worker.mode_config import parse_beat_args, parse_flower_args

SPEC: dict[str, Any] = {
    "broker": {"urlFrom": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}},
    "app": "shop.celery:app",
    "template": {"image": "registry.example/shop:1", "env": [{"name": "DJANGO_SETTINGS_MODULE", "value": "shop.s"}]},
    "queues": [{"name": "default"}],
    "beat": {"scheduleVolume": {"persistentVolumeClaim": {"claimName": "shop-beat"}}},
    "flower": {
        "auth": {"basicFrom": {"secretKeyRef": {"name": "flower-users", "key": "users"}}},
        "urlPrefix": "ops/flower",
        "persistent": True,
    },
}


def pool(**changes: Any) -> WorkerPool:
    return WorkerPool.from_object({"metadata": {"name": "shop", "namespace": "apps"}, "spec": {**SPEC, **changes}})


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_beat_is_one_pod_replaced_by_recreate_with_the_workers_security() -> None:
    rendered = render_components(pool(), uid="u1")
    beat = rendered["beat"]
    worker = render_deployments(pool(), uid="u1")["default"]
    assert beat["metadata"]["name"] == "shop-celery-beat" and beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    pod, worker_pod = beat["spec"]["template"]["spec"], worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert (
        container["args"] == ["beat"] and container["securityContext"] == worker_pod["containers"][0]["securityContext"]
    )
    assert pod["securityContext"] == {
        **worker_pod["securityContext"],
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert {"name": "celery-beat-schedule", "persistentVolumeClaim": {"claimName": "shop-beat"}} in pod["volumes"]
    assert {"name": "celery-beat-schedule", "mountPath": "/var/lib/celery-beat"} in container["volumeMounts"]
    env = env_of(container)
    assert env["WORKERPOOL_BEAT_SCHEDULE_FILE"] == "/var/lib/celery-beat/celerybeat-schedule"
    assert env["WORKERPOOL_BROKER_URL"] == {"secretKeyRef": {"name": "shop-broker", "key": "url"}}
    assert env["DJANGO_SETTINGS_MODULE"] == "shop.s"  # the app's own settings, as the workers get them
    assert container["livenessProbe"]["exec"]["command"] == ["workerpool-worker", "check", "alive"]
    # Beat's pods and the queue's never select each other.
    beat_labels = beat["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert not set(worker["spec"]["selector"]["matchLabels"].items()) <= set(beat_labels.items())
    assert not set(beat["spec"]["selector"]["matchLabels"].items()) <= set(worker_labels.items())


def test_beat_without_a_volume_keeps_its_schedule_in_tmp_and_sets_no_fs_group() -> None:
    beat = render_components(pool(beat={"scheduler": "django_celery_beat.schedulers:DatabaseScheduler"}), "u")["beat"]
    pod = beat["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["WORKERPOOL_BEAT_SCHEDULE_FILE"] == "/tmp/celerybeat-schedule"
    assert env["WORKERPOOL_BEAT_SCHEDULER"] == "django_celery_beat.schedulers:DatabaseScheduler"
    assert "fsGroup" not in pod["securityContext"]


def test_flower_takes_its_credentials_from_the_secret_only_and_never_turns_events_on() -> None:
    rendered = render_components(pool(), uid="u1")
    flower, service = rendered["flower"], rendered["flower-service"]
    (container,) = flower["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["FLOWER_BASIC_AUTH"] == {"secretKeyRef": {"name": "flower-users", "key": "users"}}
    assert env["FLOWER_ENABLE_EVENTS"] == "false"
    assert env["FLOWER_PERSISTENT"] == "true" and env["FLOWER_DB"] == "/tmp/flower.db"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ops/flower/healthcheck", "port": "http"}
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": flower["spec"]["selector"]["matchLabels"],
        "ports": [{"name": "http", "port": 5555, "targetPort": "http", "protocol": "TCP"}],
    }
    workers = env_of(render_deployments(pool(), "u1")["default"]["spec"]["template"]["spec"]["containers"][0])
    assert "WORKERPOOL_TASK_EVENTS" not in workers
    with_events = pool(flower={**SPEC["flower"], "taskEvents": True})
    workers = env_of(render_deployments(with_events, "u1")["default"]["spec"]["template"]["spec"]["containers"][0])
    assert workers["WORKERPOOL_TASK_EVENTS"] == "1"


def test_oauth_settings_come_from_secrets_and_the_spec() -> None:
    oauth = {
        "provider": "google",
        "allowedEmails": ".*@shop.example",
        "redirectUri": "https://ops.shop.example/login",
        "clientIdFrom": {"secretKeyRef": {"name": "oauth", "key": "id"}},
        "clientSecretFrom": {"secretKeyRef": {"name": "oauth", "key": "secret"}},
    }
    flower = render_components(pool(flower={"auth": {"oauth": oauth}}), "u")["flower"]
    env = env_of(flower["spec"]["template"]["spec"]["containers"][0])
    assert env["FLOWER_AUTH_PROVIDER"] == "flower.views.auth.GoogleAuth2LoginHandler"
    assert env["FLOWER_OAUTH2_SECRET"] == {"secretKeyRef": {"name": "oauth", "key": "secret"}}
    assert "FLOWER_BASIC_AUTH" not in env


def test_no_components_without_beat_and_flower() -> None:
    assert render_components(pool(beat=None, flower=None), "u") == {}


def test_components_carry_no_copy_of_themselves() -> None:
    for manifest in render_components(pool(), "u").values():  # Server-Side Apply tracks their fields
        assert "workerpool.dev/last-applied" not in manifest["metadata"]["annotations"]


# --- the entrypoint's settings -----------------------------------------------------------------------------------


def test_beat_settings_build_the_celery_beat_command_line() -> None:
    environ = {"WORKERPOOL_APP": "shop:app", "WORKERPOOL_BEAT_SCHEDULER": "x.y:Z", "WORKERPOOL_BEAT_MAX_INTERVAL": "3"}
    config = parse_beat_args(["--loglevel", "debug", "--", "--pidfile="], environ)
    assert config.celery_argv() == [
        "beat", "--loglevel", "debug", "--schedule", "/tmp/celerybeat-schedule", "--max-interval", "3",
        "--scheduler", "x.y:Z", "--pidfile=",
    ]  # fmt: skip
    assert config.scheduler_given and parse_beat_args(["--", "-S", "a:B"], {"WORKERPOOL_APP": "a"}).scheduler_given
    assert not parse_beat_args([], {"WORKERPOOL_APP": "a"}).scheduler_given


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "no Celery app given"),
        ({"WORKERPOOL_APP": "a", "WORKERPOOL_BEAT_LOCK_TTL": "8"}, "must be more than twice the max interval"),
        ({"WORKERPOOL_APP": "a", "WORKERPOOL_BEAT_MAX_INTERVAL": "0"}, "must be at least 1"),
    ],
)
def test_bad_beat_settings_are_one_line(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_beat_args([], environ)


def test_flower_settings_pass_flowers_own_arguments_through() -> None:
    config = parse_flower_args(["--", "--natural_time=True"], {"WORKERPOOL_APP": "shop:app"})
    assert config.celery_argv() == ["flower", "--natural_time=True"]


def test_task_events_add_celerys_flag() -> None:
    environ = {"WORKERPOOL_APP": "a", "WORKERPOOL_TASK_EVENTS": "1"}
    assert "--task-events" in parse_run_args([], environ).celery_argv()
    assert "--task-events" not in parse_run_args([], {"WORKERPOOL_APP": "a"}).celery_argv()
    with pytest.raises(ConfigError, match="must be 1 or 0"):
        parse_run_args([], {"WORKERPOOL_APP": "a", "WORKERPOOL_TASK_EVENTS": "yes"})


# --- pure status parts ----------------------------------------------------------------------------------------


def test_duplicate_beats_are_per_namespace_and_identity() -> None:
    same = ("shop:app", "redis://r/0", None, "")
    found = duplicate_beats(
        {
            ("apps", "a"): same,
            ("apps", "b"): same,
            ("apps", "c"): same,
            ("apps", "other-db"): ("shop:app", "redis://r/1", None, ""),
            ("apps", "no-beat"): None,
            ("staging", "a"): same,
        }
    )
    assert found[("apps", "a")] == ("b", "c") and found[("apps", "c")] == ("a", "b")
    assert found[("apps", "other-db")] == found[("apps", "no-beat")] == found[("staging", "a")] == ()


def test_beat_condition_says_duplicate_then_ready() -> None:
    assert beat_condition("shop-celery-beat", 1).status == "True"
    assert beat_condition("shop-celery-beat", 1, ["x"]).reason == "DuplicateBeat"
    waiting = beat_condition("shop-celery-beat", None)
    assert (waiting.status, waiting.reason) == (
        "False",
        "BeatNotReady",
    ) and "logs deploy/shop-celery-beat" in waiting.message
