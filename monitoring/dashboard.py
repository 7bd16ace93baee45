"""The Grafana dashboard of workerpool-operator, built with grafana-foundation-sdk.

    python -m monitoring.dashboard            # writes monitoring/dashboard.json and the chart's copy
    python -m monitoring.dashboard --check    # exits 1 when either file is stale

Every query reads series listed in docs/operations.md ("Metrics"); tests/test_prometheus.py runs each one
against a real Prometheus scraping the operator. Queues are selected by ``queue_name``, the label
celery-exporter uses too, so its panels can join this dashboard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphDrawStyle
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = (
    REPO / "monitoring" / "dashboard.json",
    REPO / "helm" / "workerpool-operator" / "files" / "dashboard.json",
)
UID = "workerpool-operator"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

POOL = 'namespace=~"$namespace", pool=~"$pool"'
QUEUE = f'{POOL}, queue_name=~"$queue_name"'
BY_QUEUE = "sum by (namespace, pool, queue_name)"
MAX_BY_QUEUE = "max by (namespace, pool, queue_name)"  # for ages: a sum over two scrapes of one queue is no age
QUEUE_LEGEND = "{{namespace}}/{{pool}} {{queue_name}}"
POOL_LEGEND = "{{namespace}}/{{pool}}"
# The operator's own process series, told apart from other exporters' by the target that also serves
# workerpool_build_info.
OPERATOR_TARGET = "and on (job, instance) workerpool_build_info"


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    return built.legend_format(legend) if legend else built


def graph(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery, bars: bool = False
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    panel = panel.height(8).span(12)
    if bars:
        panel = panel.draw_style(GraphDrawStyle.BARS).fill_opacity(80)
    for ref, item in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(item.ref_id(ref))
    return panel


def figure(title: str, description: str, expr: str, unit: str = "short") -> stat.Panel:
    panel = stat.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    return panel.height(4).span(4).with_target(query(expr).ref_id("A"))


def variable(name: str, label: str, source: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({source}, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


OVERVIEW = (
    (
        "Pools not Ready",
        "Pools whose Ready condition is not True: the operator does not scale them.",
        f"count(workerpool_pool_ready{{{POOL}}} == 0) or vector(0)",
    ),
    (
        "Brokers unreachable",
        "Pools whose broker did not answer the last poll: their replicas are held.",
        f"count(workerpool_broker_up{{{POOL}}} == 0) or vector(0)",
    ),
    ("Backlog", "Tasks waiting, all selected queues.", f"sum(workerpool_queue_backlog{{{QUEUE}}})"),
    ("In flight", "Tasks running or reserved.", f"sum(workerpool_queue_in_flight{{{QUEUE}}})"),
    ("Workers ready", "Ready worker pods.", f"sum(workerpool_queue_ready_replicas{{{QUEUE}}})"),
    (
        "Operator leaders",
        "Operator replicas holding the leader Lease: 1 is right, 0 means nothing scales.",
        "sum(workerpool_operator_leader)",
    ),
)


def overview(board: dash.Dashboard) -> dash.Dashboard:
    board = board.with_row(dash.Row("Overview"))
    for title, description, expr in OVERVIEW:
        board = board.with_panel(figure(title, description, expr))
    return board


def queues(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Queues"))
        .with_panel(
            graph(
                "Backlog",
                "Messages waiting in the broker, every priority list.",
                "short",
                query(f"{BY_QUEUE} (workerpool_queue_backlog{{{QUEUE}}})", QUEUE_LEGEND),
            )
        )
        .with_panel(
            graph(
                "In flight",
                "Tasks the workers report as running or reserved (prefetched).",
                "short",
                query(f"{BY_QUEUE} (workerpool_queue_in_flight{{{QUEUE}}})", QUEUE_LEGEND),
            )
        )
        .with_panel(
            graph(
                "Waits",
                "How long the oldest waiting task has waited (measured from its message's timestamp, or estimated: "
                "status.queues[].waitSource), its p95 over 5 minutes, and the queue's targetWaitSeconds. Above the "
                "target for longer than a start-up delay, the WaitsWithinTarget condition says why.",
                "s",
                query(
                    f"{MAX_BY_QUEUE} (workerpool_queue_oldest_task_age_seconds{{{QUEUE}}})", f"{QUEUE_LEGEND} oldest"
                ),
                query(f"{MAX_BY_QUEUE} (workerpool_queue_wait_p95_seconds{{{QUEUE}}})", f"{QUEUE_LEGEND} p95"),
                query(f"{MAX_BY_QUEUE} (workerpool_queue_target_wait_seconds{{{QUEUE}}})", f"{QUEUE_LEGEND} target"),
            )
        )
    )


def workers(board: dash.Dashboard) -> dash.Dashboard:
    series = (
        ("desired", "workerpool_queue_desired_replicas"),
        ("current", "workerpool_queue_replicas"),
        ("ready", "workerpool_queue_ready_replicas"),
        ("draining", "workerpool_queue_workers_draining"),
        ("min", "workerpool_queue_min_replicas"),
        ("max", "workerpool_queue_max_replicas"),
    )
    return (
        board.with_row(dash.Row("Workers"))
        .with_panel(
            graph(
                "Workers",
                "Desired (the engine), current (the Deployment's spec.replicas), ready, draining, and the bounds.",
                "short",
                *(query(f"{BY_QUEUE} ({name}{{{QUEUE}}})", f"{kind} {QUEUE_LEGEND}") for kind, name in series),
            )
        )
        .with_panel(
            graph(
                "Paused and fallback",
                "1 while a queue's scaling is paused, or while it is held by its fallback after failed polls.",
                "short",
                query(f"{BY_QUEUE} (workerpool_queue_paused{{{QUEUE}}})", f"paused {QUEUE_LEGEND}"),
                query(f"{BY_QUEUE} (workerpool_queue_fallback_active{{{QUEUE}}})", f"fallback {QUEUE_LEGEND}"),
            )
        )
    )


def scaling(board: dash.Dashboard) -> dash.Dashboard:
    quantiles = (("p50", 0.5), ("p99", 0.99))
    return (
        board.with_row(dash.Row("Scaling"))
        .with_panel(
            graph(
                "Scale events by reason",
                "Replica changes the operator made, by direction and kind of reason (Events say the details).",
                "short",
                query(
                    "sum by (direction, reason) "
                    f"(increase(workerpool_scale_events_total{{{QUEUE}}}[$__rate_interval]))",
                    "{{direction}}: {{reason}}",
                ),
                bars=True,
            )
        )
        .with_panel(
            graph(
                "Reaction time",
                "From the start of the poll that saw the demand to the replica change written.",
                "s",
                *(
                    query(
                        f"histogram_quantile({q}, sum by (le, direction) "
                        "(rate(workerpool_scale_reaction_seconds_bucket[$__rate_interval])))",
                        f"{name} {{{{direction}}}}",
                    )
                    for name, q in quantiles
                ),
            )
        )
        .with_panel(
            graph(
                "Tasks cancelled by scale-down",
                "Tasks cancelled because a scale-down removed the worker running them. Should stay at 0.",
                "short",
                query(
                    f"{BY_QUEUE} (increase(workerpool_scale_down_cancelled_tasks_total{{{QUEUE}}}[$__rate_interval]))",
                    QUEUE_LEGEND,
                ),
                bars=True,
            )
        )
    )


def operator(board: dash.Dashboard) -> dash.Dashboard:
    return (
        board.with_row(dash.Row("Brokers and operator"))
        .with_panel(
            graph(
                "Broker up",
                "1 when the pool's broker answered the last poll.",
                "short",
                query(f"workerpool_broker_up{{{POOL}}}", POOL_LEGEND),
            )
        )
        .with_panel(
            graph(
                "Failed polls",
                "Failed observations of each pool's broker.",
                "short",
                query(
                    "sum by (namespace, pool) "
                    f"(increase(workerpool_observation_errors_total{{{POOL}}}[$__rate_interval]))",
                    POOL_LEGEND,
                ),
                bars=True,
            )
        )
        .with_panel(
            graph(
                "Poll duration",
                "One pipelined poll of a broker (every queue on it, in one round trip).",
                "s",
                query(
                    "histogram_quantile(0.99, sum by (le, broker) "
                    "(rate(workerpool_broker_poll_seconds_bucket[$__rate_interval])))",
                    "p99 {{broker}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Kubernetes API errors",
                "The operator's own API requests answered with an error (4xx, 5xx), by method and code.",
                "reqps",
                query(
                    "sum by (method, code) "
                    '(rate(workerpool_kube_api_requests_total{code=~"[45].."}[$__rate_interval]))',
                    "{{method}} {{code}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Leader",
                "Which operator replica holds the leader Lease.",
                "short",
                query("workerpool_operator_leader", "{{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Operator CPU and memory",
                "The operator processes: CPU cores used and resident memory.",
                "short",
                query(f"rate(process_cpu_seconds_total[$__rate_interval]) {OPERATOR_TARGET}", "cpu {{instance}}"),
                query(f"process_resident_memory_bytes {OPERATOR_TARGET} / 2^20", "MiB {{instance}}"),
            )
        )
    )


def build() -> dict[str, object]:
    board = (
        dash.Dashboard("Celery workers: workerpool-operator")
        .uid(UID)
        .description("Celery queues, their workers and the operator scaling them.")
        .tags(["celery", "workerpool-operator"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(dash.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(variable("namespace", "Namespace", "workerpool_queue_backlog"))
        .with_variable(variable("pool", "Pool", 'workerpool_queue_backlog{namespace=~"$namespace"}'))
        .with_variable(variable("queue_name", "Queue", f"workerpool_queue_backlog{{{POOL}}}"))
    )
    for section in (overview, queues, workers, scaling, operator):
        board = section(board)
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a written dashboard differs")
    args = parser.parse_args(argv)
    text = render()
    stale = [path for path in OUTPUTS if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run `python -m monitoring.dashboard`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
