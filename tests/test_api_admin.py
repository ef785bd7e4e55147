"""DELETE /predictions/delete and POST /reset_db: only with the right bearer token.

A refused request must leave every row in place; with no ADMIN_TOKEN configured
the endpoints are off for everyone.
"""

from __future__ import annotations

import datetime as dt
import io

import pytest
from support import ADMIN_TOKEN, row_count

from galaxylib.store.database import PredictionStore

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
RIGHT = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRONG = {"Authorization": "Bearer not-the-token"}


@pytest.fixture
def ids(database_url) -> list[int]:
    store = PredictionStore(database_url)
    rows = store.add_many(
        [
            {
                "filename": f"{i}.jpg",
                "predicted_class": cls,
                "confidence": conf,
                "created_at": T0 + dt.timedelta(minutes=i),
            }
            for i, (cls, conf) in enumerate(
                [("Merging", 0.9), ("Merging", 0.4), ("Round Smooth", 0.8), ("Barred Spiral", 0.7)]
            )
        ]
    )
    store.engine.dispose()
    return [r.id for r in rows]


@pytest.fixture
def client(make_app, database_url, ids):
    return make_app(database_url).test_client()


# --- the token ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "missing_token"),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "missing_token"),
        ({"Authorization": "Bearer "}, "missing_token"),
        (WRONG, "invalid_token"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, "invalid_token"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, "invalid_token"),
    ],
)
def test_delete_without_the_right_token_is_refused_and_deletes_nothing(client, database_url, ids, headers, code):
    response = client.delete("/predictions/delete", json={"ids": ids}, headers=headers)

    assert response.status_code == 401
    assert response.json["error"]["code"] == code
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert row_count(database_url) == 4


@pytest.mark.parametrize("headers", [{}, WRONG])
def test_reset_without_the_right_token_is_refused_and_keeps_the_rows(client, database_url, headers):
    response = client.post("/reset_db", headers=headers)

    assert response.status_code == 401
    assert row_count(database_url) == 4


def test_the_bearer_scheme_name_is_case_insensitive(client, database_url, ids):
    response = client.delete(
        "/predictions/delete", json={"ids": ids[:1]}, headers={"Authorization": f"bearer {ADMIN_TOKEN}"}
    )

    assert response.status_code == 200


@pytest.mark.parametrize("configured", [None, "", "   "])
def test_without_a_configured_token_the_destructive_endpoints_are_off(make_app, database_url, ids, configured):
    client = make_app(database_url, admin_token=configured).test_client()

    for response in (
        client.delete("/predictions/delete", json={"ids": ids}, headers=RIGHT),
        client.delete("/predictions/delete", json={"ids": ids}, headers={"Authorization": "Bearer "}),
        client.post("/reset_db", headers=RIGHT),
    ):
        assert response.status_code == 403
        assert response.json["error"]["code"] == "admin_disabled"
    assert row_count(database_url) == 4


@pytest.mark.parametrize(
    "near_miss",
    [ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1] + "X", ADMIN_TOKEN.upper(), ADMIN_TOKEN[:8]],
    ids=["prefix", "longer", "last-char", "case", "short"],
)
def test_only_the_exact_token_is_accepted(client, database_url, near_miss):
    # (The comparison is hmac.compare_digest, constant-time by construction: a code-review item.)
    response = client.post("/reset_db", headers={"Authorization": f"Bearer {near_miss}"})

    assert response.status_code == 401
    assert row_count(database_url) == 4


# --- delete ---------------------------------------------------------------------------------


def test_delete_by_ids_removes_exactly_those_rows(client, database_url, ids):
    response = client.delete("/predictions/delete", json={"ids": ids[:2] + [999999]}, headers=RIGHT)

    assert response.status_code == 200
    assert response.json == {"deleted": 2}
    assert row_count(database_url) == 2
    assert client.get(f"/predictions/{ids[0]}").status_code == 404
    assert client.get(f"/predictions/{ids[2]}").status_code == 200


def test_delete_by_query_filters_uses_the_listing_filters(client, database_url):
    response = client.delete("/predictions/delete?predicted_class=Merging&min_confidence=0.5", headers=RIGHT)

    assert response.json == {"deleted": 1}
    assert row_count(database_url) == 3


def test_delete_by_filters_in_the_json_body(client, database_url):
    response = client.delete("/predictions/delete", json={"until": "2026-11-01T12:01:00Z"}, headers=RIGHT)

    assert response.json == {"deleted": 2}
    assert row_count(database_url) == 2


def test_ids_and_filters_together_must_both_match(client, database_url, ids):
    response = client.delete("/predictions/delete", json={"ids": ids, "predicted_class": "Merging"}, headers=RIGHT)

    assert response.json == {"deleted": 2}
    assert row_count(database_url) == 2


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({}, "missing_selection"),
        ({"json": {}}, "missing_selection"),
        ({"json": {"ids": []}}, "invalid_ids"),
        ({"json": {"ids": "1,2"}}, "invalid_ids"),
        ({"json": {"ids": [1, "two"]}}, "invalid_ids"),
        ({"json": {"ids": [1, -2]}}, "invalid_ids"),
        ({"json": {"ids": [True]}}, "invalid_ids"),
        ({"json": [1, 2]}, "invalid_json"),
        ({"data": "{not json", "content_type": "application/json"}, "invalid_json"),
        ({"json": {"predicted_class": "Spiral"}}, "invalid_parameter"),
        ({"json": {"everything": True}}, "invalid_parameter"),
        ({"query_string": {"min_confidence": "2"}}, "invalid_parameter"),
    ],
)
def test_an_invalid_delete_request_is_a_400_and_deletes_nothing(client, database_url, kwargs, code):
    response = client.delete("/predictions/delete", headers=RIGHT, **kwargs)

    assert response.status_code == 400
    assert response.json["error"]["code"] == code
    assert row_count(database_url) == 4


def test_a_delete_body_that_is_not_json_is_a_415(client, database_url):
    response = client.delete(
        "/predictions/delete", data="ids=1", headers=RIGHT, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 415
    assert row_count(database_url) == 4


# --- reset ----------------------------------------------------------------------------------


def test_reset_with_the_token_empties_the_table_and_predicting_still_works(client, database_url, sample_files):
    response = client.post("/reset_db", headers=RIGHT)

    assert response.status_code == 200
    assert response.json == {"reset": True, "deleted": 4}
    assert row_count(database_url) == 0

    predicted = client.post(
        "/predict",
        data={"file": (io.BytesIO(sample_files[0].read_bytes()), "g.jpg")},
        content_type="multipart/form-data",
    )
    assert predicted.status_code == 200
    assert row_count(database_url) == 1
