"""The emulator's pure parts on their own: quantities, structured-merge-diff's field sets, managers, selectors and
the watch history (tests/apiserver). Over HTTP: tests/test_emulator.py and tests/test_emulator_apply.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.apiserver import fieldpath, managed, quantity, schema, watch
from tests.apiserver.managed import ApplyConflict, Entry


def _kind(api_version: str, kind: str) -> schema.Node:
    found = schema.kubernetes().kind(api_version, kind)
    assert found is not None
    return found


DEPLOYMENT = _kind("apps/v1", "Deployment")


# --- quantities ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (2, "2"),
        ("2", "2"),
        ("1.5Gi", "1536Mi"),
        ("1536Mi", "1536Mi"),
        (0.5, "500m"),
        ("0.5", "500m"),
        ("1000m", "1"),
        ("1024Mi", "1Gi"),
        ("1048576Ki", "1Gi"),
        ("1000Ki", "1000Ki"),
        ("1073741824", "1073741824"),  # decimal stays decimal
        ("12000", "12k"),
        ("1e3", "1e3"),
        ("1.5e3", "1500"),
        ("129e-2", "1290e-3"),
        ("0.1Ki", "102400m"),  # a binary quantity below 1024 is written in decimal
        ("1.1Mi", "1153433600m"),  # not a whole number of bytes: decimal, no rounding
        ("0.0000000001", "1n"),  # below 1n: rounded up
        ("-1", "-1"),
        (".5", "500m"),
        ("0", "0"),
        ("1E", "1E"),
    ],
)
def test_quantities_take_the_api_servers_canonical_form(given: Any, stored: str) -> None:
    assert quantity.canonical(given) == stored


@pytest.mark.parametrize("bad", ["", "x", "1ki", "1K", "1 Mi", "Infinity", "1_000", True, None, "1.2.3"])
def test_what_is_not_a_quantity_is_refused(bad: Any) -> None:
    with pytest.raises(quantity.QuantityError):
        quantity.canonical(bad)


@given(st.integers(min_value=0, max_value=10**15), st.sampled_from(["", "m", "k", "Ki", "Mi", "Gi", "M", "G"]))
def test_the_canonical_form_keeps_the_value_and_is_a_fixed_point(number: int, suffix: str) -> None:
    text = f"{number}{suffix}"
    canonical = quantity.canonical(text)
    assert quantity.value_of(canonical) == quantity.value_of(text)
    assert quantity.canonical(canonical) == canonical


def test_a_value_is_exact() -> None:
    assert quantity.value_of("1.5Gi") == Decimal(1610612736)


# --- field sets -----------------------------------------------------------------------------------------------


def _deployment(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"spec": {**spec, "template": {"spec": {"containers": containers}}}}


def test_a_field_set_goes_by_list_keys_and_survives_fields_v1() -> None:
    obj = _deployment(
        [{"name": "w", "image": "i", "ports": [{"containerPort": 80}], "args": ["a"], "resources": {}}],
        selector={"matchLabels": {"a": "b"}},
    )
    fields = fieldpath.field_set(obj, DEPLOYMENT)
    worker = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"w"}')
    assert {
        ("f:spec", "f:selector"),  # an atomic map: one field
        worker,
        (*worker, "f:args"),  # an atomic list: one field
        (*worker, "f:resources"),  # empty: a field of its own
        (*worker, "f:ports", 'k:{"containerPort":80,"protocol":"TCP"}'),  # a key's default counts
    } <= fields
    assert ("f:spec",) not in fields and ("f:spec", "f:template") not in fields  # structs are not fields
    assert fieldpath.decode(fieldpath.encode(fields)) == fields
    assert fieldpath.encode(fields)["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"w"}']["."] == {}


def test_compare_marks_maps_that_appear_but_not_lists() -> None:
    old = _deployment([{"name": "w", "image": "i"}])
    new = _deployment([{"name": "w", "image": "j", "resources": {"limits": {"cpu": "1"}}}, {"name": "x"}])
    change = fieldpath.compare(old, new, DEPLOYMENT)
    worker = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"w"}')
    assert change.modified == {(*worker, "f:image")}
    assert (*worker, "f:resources") in change.added and (*worker, "f:resources", "f:limits", "f:cpu") in change.added
    assert ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"x"}') in change.added
    assert ("f:spec", "f:template", "f:spec", "f:containers") not in change.added
    back = fieldpath.compare(new, old, DEPLOYMENT)
    assert (*worker, "f:resources") in back.removed


def test_merge_keeps_the_live_order_and_places_new_items_where_the_configuration_puts_them() -> None:
    live = _deployment([{"name": "a", "image": "1"}, {"name": "b", "image": "1"}, {"name": "c"}])
    config = _deployment([{"name": "d"}, {"name": "b", "image": "2"}, {"name": "a"}])
    merged = fieldpath.merge(live, config, DEPLOYMENT)
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert containers == [{"name": "d"}, {"name": "b", "image": "2"}, {"name": "c"}, {"name": "a", "image": "1"}]
    atomic = fieldpath.merge(
        _deployment([{"name": "a", "args": ["1", "2"]}]), _deployment([{"name": "a", "args": ["3"]}]), DEPLOYMENT
    )
    assert atomic["spec"]["template"]["spec"]["containers"][0]["args"] == ["3"]


def test_remove_takes_a_field_with_everything_under_it() -> None:
    obj = _deployment([{"name": "a", "image": "1", "env": [{"name": "X"}]}, {"name": "b"}])
    gone = fieldpath.remove(
        obj, frozenset({("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"b"}')}), DEPLOYMENT
    )
    assert gone["spec"]["template"]["spec"]["containers"] == [{"name": "a", "image": "1", "env": [{"name": "X"}]}]


def test_fields_are_named_as_the_api_server_names_them() -> None:
    path = (
        "f:spec",
        "f:template",
        "f:spec",
        "f:containers",
        'k:{"name":"w"}',
        "f:ports",
        'k:{"containerPort":80,"protocol":"TCP"}',
    )
    assert fieldpath.describe(path) == '.spec.template.spec.containers[name="w"].ports[containerPort=80,protocol="TCP"]'
    assert fieldpath.describe(("f:metadata", "f:finalizers", 'v:"x"')) == '.metadata.finalizers[="x"]'


# --- managers ---------------------------------------------------------------------------------------------------


def _apply(entries: list[Entry], live: Any, config: Any, manager: str, force: bool = False) -> tuple[Any, list[Entry]]:
    return managed.apply(
        entries,
        live,
        config,
        DEPLOYMENT,
        manager=manager,
        subresource="",
        api_version="apps/v1",
        now="2026-01-01T00:00:00Z",
        force=force,
        ignored=lambda _path: False,
        reset=lambda _live, merged: merged,
    )


def test_an_apply_owns_its_configuration_and_prunes_what_it_stops_applying() -> None:
    first, entries = _apply([], {}, _deployment([{"name": "w", "image": "1", "args": ["a"]}]), "op")
    (entry,) = entries
    assert (entry.manager, entry.operation) == ("op", "Apply")
    assert ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"w"}', "f:args") in entry.fields
    second, entries = _apply(entries, first, _deployment([{"name": "w", "image": "1"}]), "op")
    assert second["spec"]["template"]["spec"]["containers"] == [{"name": "w", "image": "1"}]


def test_an_apply_conflicts_with_another_owner_unless_forced() -> None:
    live, entries = _apply([], {}, _deployment([{"name": "w", "image": "1"}]), "a")
    with pytest.raises(ApplyConflict) as conflict:
        _apply(entries, live, _deployment([{"name": "w", "image": "2"}]), "b")
    assert (
        conflict.value.message
        == 'Apply failed with 1 conflict: conflict with "a": .spec.template.spec.containers[name="w"].image'
    )
    forced, entries = _apply(entries, live, _deployment([{"name": "w", "image": "2"}]), "b", force=True)
    assert forced["spec"]["template"]["spec"]["containers"] == [{"name": "w", "image": "2"}]
    owners = {e.manager: e.fields for e in entries}
    image = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"w"}', "f:image")
    assert image in owners["b"] and image not in owners["a"]


def test_an_update_takes_what_it_changes_and_keeps_its_time_when_it_changes_nothing() -> None:
    old = _deployment([{"name": "w", "image": "1"}], replicas=1)
    new = _deployment([{"name": "w", "image": "1"}], replicas=2)
    common: dict[str, Any] = {"subresource": "", "api_version": "apps/v1", "ignored": lambda _path: False}
    entries = managed.update([], old, new, DEPLOYMENT, manager="scaler", now="t1", **common)
    assert entries == [Entry("scaler", "Update", "apps/v1", "t1", frozenset({("f:spec", "f:replicas")}))]
    same = managed.update(entries, new, new, DEPLOYMENT, manager="scaler", now="t2", **common)
    assert same == entries
    assert managed.manager_name(None, "kubectl/v1.36.0 (linux/amd64)") == "kubectl"


def test_entries_are_written_as_the_server_sorts_them() -> None:
    fields = frozenset({("f:spec", "f:replicas")})
    entries = [Entry("z", "Update", "apps/v1", "t1", fields), Entry("b", "Apply", "apps/v1", "t2", fields)]
    assert [e["manager"] for e in managed.write(entries)] == ["b", "z"]
    assert managed.read(managed.write(entries)) == sorted(entries, key=lambda e: e.operation)


# --- selectors and history --------------------------------------------------------------------------------------


def test_label_selectors_as_the_server_reads_them() -> None:
    labels = {"app": "shop", "tier": "back"}
    assert watch.label_matcher("app=shop,tier in (back, front)")(labels)
    assert not watch.label_matcher("app=shop,!tier")(labels)
    assert watch.label_matcher("tier notin (front),app")(labels)
    assert watch.label_matcher("")(labels)
    with pytest.raises(watch.SelectorError):
        watch.label_matcher("app in (shop")


def test_the_history_forgets_the_oldest_changes() -> None:
    history = watch.History(limit=2)
    for version in (1, 2, 3):
        history.add(watch.Change(version, "ADDED", {"metadata": {"name": str(version)}}))
    assert history.since(0) is None and history.forgotten == 1
    assert [c.version for c in history.since(1) or ()] == [2, 3]
