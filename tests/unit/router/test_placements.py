"""The placement table's JSON: what the operator writes is what the router reads."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.contracts.placements import (
    JSON_SCHEMA,
    PlacementError,
    build_table,
    normalize_pod_url,
    parse_placements,
)

POD_A, POD_B = "http://10.0.0.5:8080", "http://10.0.0.6:8080"


def test_reads_the_documented_shape():
    text = json.dumps({"version": 1, "generation": 7, "baseModel": "bmd",
                       "pods": [POD_A, POD_B + "/"], "adapters": {"sql": [POD_B], "chat": []},
                       "futureKey": {"ignored": True}})
    table = parse_placements(text)
    assert table.pods == (POD_A, POD_B)
    assert table.pods_for("sql") == (POD_B,)
    assert table.pods_for("chat") == ()
    assert table.pods_for("unknown") == ()
    assert (table.generation, table.base_model) == (7, "bmd")


def test_adapter_pods_that_are_not_ready_are_dropped():
    table = parse_placements(json.dumps({"pods": [POD_A], "adapters": {"sql": [POD_A, POD_B]}}))
    assert table.pods_for("sql") == (POD_A,)


def test_round_trip_is_stable_and_schema_valid():
    table = build_table([POD_B, POD_A], {"b": [POD_B, POD_A], "a": [POD_A]}, generation=3)
    text = table.to_json()
    jsonschema.validate(json.loads(text), JSON_SCHEMA)
    again = parse_placements(text)
    assert again.to_json() == text
    assert set(again.pods_for("b")) == {POD_A, POD_B}


@pytest.mark.parametrize(("text", "problem"), [
    ("not json", "not JSON"),
    ("[]", "JSON object"),
    ('{"pods": []}', "lacks 'adapters'"),
    ('{"adapters": {}}', "lacks 'pods'"),
    ('{"pods": "http://a:1", "adapters": {}}', "'pods' must be a list"),
    ('{"pods": [], "adapters": []}', "'adapters' must map"),
    ('{"pods": [], "adapters": {"x": "http://a:1"}}', "adapters['x'] must be a list"),
    ('{"pods": ["10.0.0.5:8080"], "adapters": {}}', "is not http(s)://host:port"),
    ('{"pods": ["http://a:1/v1"], "adapters": {}}', "without a path"),
    ('{"pods": [1], "adapters": {}}', "must be a string"),
    ('{"pods": [], "adapters": {"": []}}', "non-empty strings"),
    ('{"version": 2, "pods": [], "adapters": {}}', "version 2"),
    ('{"generation": -1, "pods": [], "adapters": {}}', "'generation'"),
    ('{"baseModel": 3, "pods": [], "adapters": {}}', "'baseModel'"),
])
def test_bad_tables_are_refused_with_the_problem_named(text, problem):
    with pytest.raises(PlacementError, match=problem.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        parse_placements(text)


URLS = st.one_of(
    st.sampled_from([POD_A, POD_B, "https://pod-0.ns.svc:8443/", "http://[::1]:8080"]),
    st.sampled_from(["10.0.0.5:8080", " http://a:1", "http://a:1\n", "http://a:1/path",
                     "ftp://a:1", "http://", "http://a b:1", "http://a:1?q", ""]),
    st.text(max_size=12))
DOCUMENTS = st.fixed_dictionaries(
    {"pods": st.lists(URLS, max_size=3),
     "adapters": st.dictionaries(st.text(min_size=1, max_size=5), st.lists(URLS, max_size=2),
                                 max_size=3)},
    optional={"version": st.sampled_from([1, 2]),
              "generation": st.one_of(st.integers(-2, 5), st.just("3"))})


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS)
def test_parser_accepts_exactly_what_the_schema_accepts(document):
    # jsonschema matches patterns with Python's `re`, whose `$` also matches before a final
    # newline; in ECMA-262, the schema's own dialect, it does not, and neither does the parser.
    urls = [*document["pods"], *(url for urls in document["adapters"].values() for url in urls)]
    python_dollar_quirk = any(isinstance(url, str) and url.endswith("\n") for url in urls)
    schema_ok = (jsonschema.Draft202012Validator(JSON_SCHEMA).is_valid(document)
                 and not python_dollar_quirk)
    try:
        parse_placements(json.dumps(document))
        parser_ok = True
    except PlacementError:
        parser_ok = False
    assert parser_ok == schema_ok


def test_normalize_drops_only_the_trailing_slash():
    assert normalize_pod_url("http://10.0.0.5:8080/") == POD_A
    with pytest.raises(PlacementError, match="without a path"):
        normalize_pod_url(" http://10.0.0.5:8080")
