"""The HTTP surface: one JSON error shape everywhere, no internals leaked, documentation in sync."""

from __future__ import annotations

import io
import logging

import pytest
from support import row_count


@pytest.fixture
def app(make_app, sqlite_url):
    return make_app(sqlite_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("get", "/no/such/page", 404, "not_found"),
        ("post", "/predictions", 405, "method_not_allowed"),
        ("put", "/predict", 405, "method_not_allowed"),
        ("get", "/predictions/delete", 405, "method_not_allowed"),
        ("post", "/predictions/delete", 405, "method_not_allowed"),
        ("get", "/reset_db", 405, "method_not_allowed"),
    ],
)
def test_routing_errors_are_json(client, method, path, status, code):
    response = getattr(client, method)(path)

    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.json["error"]["code"] == code
    assert set(response.json["error"]) == {"code", "message"}
    if status == 405:
        assert response.headers["Allow"]


def test_an_oversized_body_is_a_json_413_before_it_is_parsed(make_app, sqlite_url):
    client = make_app(sqlite_url, max_upload_mb=1).test_client()

    response = client.post(
        "/predict",
        data={"file": (io.BytesIO(b"\xff" * (2 * 1024 * 1024)), "x.jpg")},
        content_type="multipart/form-data",
    )

    assert response.status_code == 413
    assert response.json["error"] == {
        "code": "payload_too_large",
        "message": "the request body is over the upload limit of 1 MB",
    }


def test_an_unexpected_failure_is_a_generic_500_logged_with_its_traceback(
    app, client, sqlite_url, sample_files, caplog, monkeypatch
):
    predictor = app.extensions["galaxy"].model.predictor

    def explode(batch):
        raise RuntimeError("secret detail: /srv/models/internal.tflite")

    monkeypatch.setattr(predictor, "forward", explode)  # the LiteRT call every prediction goes through
    with caplog.at_level(logging.ERROR, logger="serve"):
        response = client.post(
            "/predict",
            data={"file": (io.BytesIO(sample_files[0].read_bytes()), "g.jpg")},
            content_type="multipart/form-data",
        )

    assert response.status_code == 500
    assert response.json == {
        "error": {"code": "internal_error", "message": "an internal error occurred; it has been logged"}
    }
    assert "secret" not in response.get_data(as_text=True)
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)
    assert row_count(sqlite_url) == 0


def test_debug_is_off(app):
    assert app.debug is False
    assert app.config["PROPAGATE_EXCEPTIONS"] is False


def test_responses_tell_browsers_not_to_sniff_or_cache(client):
    response = client.get("/health")

    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_the_openapi_document_describes_every_route(app, client):
    spec = client.get("/openapi.json").json
    routes = {
        (rule.rule.replace("<raw_id>", "{id}"), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}

    assert spec["openapi"].startswith("3.")
    assert routes - {("/", "get")} == documented
    assert spec["paths"]["/reset_db"]["post"]["security"] == [{"bearer": []}]


def test_the_openapi_document_lists_the_ten_classes_in_order(client):
    from galaxylib.classes import CLASS_NAMES

    schema = client.get("/openapi.json").json["components"]["schemas"]["Prediction"]

    assert schema["properties"]["predicted_class"]["enum"] == list(CLASS_NAMES)


def test_the_docs_page_renders_the_openapi_document_without_external_assets(client):
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'fetch("openapi.json")' in page
    assert "http://" not in page and "https://" not in page


def test_the_index_points_to_the_docs(client):
    assert client.get("/").json["docs"] == "/docs"
