"""GET /predictions and GET /predictions/<id>: the audit trail, its paging, filters and validation.

Rows are written with galaxylib's PredictionStore (the table the API serves), with
chosen classes, confidences and times, so every filter has a known answer.
"""

from __future__ import annotations

import datetime as dt

import pytest

from galaxylib.store.database import PredictionStore

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
ROWS = [  # (filename, class, confidence, minutes after T0, in_distribution: None = a model without the check)
    ("a.jpg", "Round Smooth", 0.91, 0, True),
    ("b.jpg", "Barred Spiral", 0.55, 10, False),
    ("c.jpg", "Round Smooth", 0.30, 20, None),
    ("d.jpg", "Merging", 0.99, 30, True),
    ("a.jpg", "Edge-on with Bulge", 0.75, 40, False),
]
ALL_NEWEST_FIRST = [(f, c) for f, c, *_ in reversed(ROWS)]


@pytest.fixture
def store(database_url):
    store = PredictionStore(database_url)
    yield store
    store.engine.dispose()


@pytest.fixture
def client(make_app, database_url, store):
    store.add_many(
        [
            {
                "filename": f,
                "predicted_class": c,
                "confidence": p,
                "metadata": {"seeded": True},
                "in_distribution": ood,
                "created_at": T0 + dt.timedelta(minutes=m),
            }
            for f, c, p, m, ood in ROWS
        ]
    )
    return make_app(database_url).test_client()


@pytest.fixture
def sqlite_client(make_app, sqlite_url):
    """For validation, which happens before any query: one database is enough."""
    return make_app(sqlite_url).test_client()


def names(response) -> list[str]:
    return [(p["filename"], p["predicted_class"]) for p in response.json["predictions"]]


def test_the_listing_is_newest_first_with_the_total(client):
    response = client.get("/predictions")

    assert response.status_code == 200
    assert response.json["total"] == 5
    assert [p["created_at"] for p in response.json["predictions"]] == [
        (T0 + dt.timedelta(minutes=m)).isoformat() for m in (40, 30, 20, 10, 0)
    ]
    first = response.json["predictions"][0]
    assert set(first) == {
        "id",
        "filename",
        "predicted_class",
        "confidence",
        "metadata",
        "in_distribution",
        "created_at",
    }


def test_limit_and_offset_page_through_the_rows(client):
    page = client.get("/predictions?limit=2&offset=2").json

    assert [p["filename"] for p in page["predictions"]] == ["c.jpg", "b.jpg"]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 2)


def test_the_cursor_walks_every_row_once(client):
    seen, cursor = [], None
    for _ in range(5):
        page = client.get("/predictions", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})}).json
        seen += [p["id"] for p in page["predictions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert len(seen) == len(set(seen)) == 5
    assert cursor is None  # the last page says there is no next one


def test_the_cursor_follows_time_order_even_when_ids_do_not(client, store):
    """Concurrent workers can commit a later created_at with a smaller id; no row may be skipped."""
    later, earlier = store.add_many(
        [
            {
                "filename": "late.jpg",
                "predicted_class": "Merging",
                "confidence": 0.5,
                "created_at": T0 + dt.timedelta(minutes=50),
            },
            {
                "filename": "early.jpg",
                "predicted_class": "Merging",
                "confidence": 0.5,
                "created_at": T0 + dt.timedelta(minutes=45),
            },
        ]
    )
    assert later.id < earlier.id

    first = client.get("/predictions?limit=1").json
    second = client.get(f"/predictions?limit=1&cursor={first['next_cursor']}").json

    assert first["predictions"][0]["filename"] == "late.jpg"
    assert second["predictions"][0]["filename"] == "early.jpg"


@pytest.mark.parametrize(
    "query, expected",
    [
        ("predicted_class=Round Smooth", [("c.jpg", "Round Smooth"), ("a.jpg", "Round Smooth")]),
        ("min_confidence=0.9", [("d.jpg", "Merging"), ("a.jpg", "Round Smooth")]),
        (
            "since=2026-11-01T12:20:00Z",
            [("a.jpg", "Edge-on with Bulge"), ("d.jpg", "Merging"), ("c.jpg", "Round Smooth")],
        ),
        ("until=2026-11-01T12:10:00%2B00:00", [("b.jpg", "Barred Spiral"), ("a.jpg", "Round Smooth")]),
        ("until=2026-11-01T12:10:00+00:00", [("b.jpg", "Barred Spiral"), ("a.jpg", "Round Smooth")]),
        (
            "since=2026-11-01T13:05:00%2B01:00&until=2026-11-01T12:30:00",
            [("d.jpg", "Merging"), ("c.jpg", "Round Smooth"), ("b.jpg", "Barred Spiral")],
        ),
        # A plain date is a whole day (UTC): until=2026-11-01 keeps that day's rows, inclusive.
        ("until=2026-11-01", ALL_NEWEST_FIRST),
        ("since=2026-11-01&until=2026-11-01", ALL_NEWEST_FIRST),
        ("until=2026-10-31", []),
        ("since=2026-11-02", []),
        ("filename=a.jpg", [("a.jpg", "Edge-on with Bulge"), ("a.jpg", "Round Smooth")]),
        ("filename=a.jpg&min_confidence=0.8", [("a.jpg", "Round Smooth")]),
        ("predicted_class=Disturbed", []),
        ("in_distribution=false", [("a.jpg", "Edge-on with Bulge"), ("b.jpg", "Barred Spiral")]),
        ("in_distribution=true", [("d.jpg", "Merging"), ("a.jpg", "Round Smooth")]),
        ("in_distribution=true&predicted_class=Round Smooth", [("a.jpg", "Round Smooth")]),
    ],
)
def test_filters_select_the_matching_rows_and_the_total_counts_them(client, query, expected):
    response = client.get(f"/predictions?{query}")

    assert response.status_code == 200, response.json
    assert names(response) == expected
    assert response.json["total"] == len(expected)


def test_the_total_ignores_paging(client):
    page = client.get("/predictions?predicted_class=Round Smooth&limit=1").json

    assert len(page["predictions"]) == 1
    assert page["total"] == 2


def test_limit_zero_returns_only_the_total(client):
    page = client.get("/predictions?limit=0").json

    assert (page["predictions"], page["total"], page["next_cursor"]) == ([], 5, None)


@pytest.mark.parametrize(
    "query, code",
    [
        ("limit=-1", "invalid_parameter"),
        ("limit=abc", "invalid_parameter"),
        ("limit=1.5", "invalid_parameter"),
        ("limit=501", "invalid_parameter"),
        ("limit=", "invalid_parameter"),
        ("offset=-3", "invalid_parameter"),
        ("limit=5&limit=6", "invalid_parameter"),
        ("since=yesterday", "invalid_parameter"),
        ("until=2026-13-45", "invalid_parameter"),
        ("since=2026-11-02&until=2026-11-01", "invalid_parameter"),
        ("min_confidence=1.5", "invalid_parameter"),
        ("min_confidence=nan", "invalid_parameter"),
        ("min_confidence=high", "invalid_parameter"),
        ("predicted_class=Smooth, Cigar shaped", "invalid_parameter"),  # astroNN's wrong name for class 4
        ("min_conf=0.9", "invalid_parameter"),
        ("in_distribution=maybe", "invalid_parameter"),
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("offset=1&cursor=MjAyNi0xMS0wMVQxMjowMDowMCswMDowMHwx", "invalid_parameter"),
    ],
)
def test_invalid_query_parameters_are_a_400(sqlite_client, query, code):
    response = sqlite_client.get(f"/predictions?{query}")

    assert response.status_code == 400
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]


def test_rows_of_an_earlier_model_can_still_be_filtered_by_their_own_class(client, store):
    """The table keeps an earlier model's rows (GZ1's coarse classes, say) after the served model
    changed; its class names still filter, and a name nobody ever predicted is still a typo."""
    store.add_many(
        [
            {
                "filename": "sdss.jpg",
                "predicted_class": "edge_on",
                "confidence": 0.8,
                "created_at": T0 + dt.timedelta(minutes=5),
            }
        ]
    )

    found = client.get("/predictions?predicted_class=edge_on")
    typo = client.get("/predictions?predicted_class=edge-on")

    assert found.status_code == 200 and names(found) == [("sdss.jpg", "edge_on")]
    assert typo.status_code == 400 and "edge-on" in typo.json["error"]["message"]
    assert "Round Smooth" in typo.json["error"]["message"]  # the served model's classes are listed


def test_one_prediction_is_fetched_by_id(client):
    newest = client.get("/predictions?limit=1").json["predictions"][0]

    response = client.get(f"/predictions/{newest['id']}")

    assert response.status_code == 200
    assert response.json == newest


def test_an_absent_id_is_a_json_404(client):
    response = client.get("/predictions/999999")

    assert response.status_code == 404
    assert response.json["error"] == {"code": "not_found", "message": "no prediction with id 999999"}


@pytest.mark.parametrize("bad_id", ["abc", "-1", "0", "1.5", "99999999999999999999999", "%20"])
def test_a_malformed_id_is_a_400(sqlite_client, bad_id):
    response = sqlite_client.get(f"/predictions/{bad_id}")

    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_id"
