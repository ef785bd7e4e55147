"""GET /metrics: Prometheus counters that agree with what the API answered, in one process and
summed over gunicorn's workers (serve/metrics.py, gunicorn.conf.py, docs/monitoring.md).

Every scrape is parsed with prometheus_client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import collections
import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from support import ADMIN_TOKEN, temporary_postgres_database
from test_serve_gunicorn import Gunicorn

NOT_AN_IMAGE = ("notes.txt", b"this is not an image")


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(scraped: list, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(s.value for s in scraped if s.name == name and labels.items() <= s.labels.items())


def scrape(client) -> list:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return samples(response.get_data(as_text=True))


def post(client, *files: tuple[str, bytes]):
    return client.post(
        "/predict",
        data={"file": [(io.BytesIO(data), name) for name, data in files]},
        content_type="multipart/form-data",
    )


# --- one process: the Flask test client ---------------------------------------------------------


def test_predictions_and_refusals_move_the_counters_by_exactly_their_amounts(make_app, sqlite_url, sample_files):
    client = make_app(sqlite_url).test_client()
    cutouts = [(p.name, p.read_bytes()) for p in sample_files[:3]]

    single = post(client, cutouts[0])
    batch = post(client, cutouts[1], NOT_AN_IMAGE, cutouts[2])  # 200: two predictions and one error entry
    refused = post(client, NOT_AN_IMAGE)
    stored_path = f"/predictions/{single.json['predictions'][0]['prediction_id']}"
    stored = client.get(stored_path)
    bad_id = client.get("/predictions/abc")
    lost = client.get("/no/such/page")
    assert [r.status_code for r in (single, batch, refused, stored, bad_id, lost)] == [200, 200, 415, 200, 400, 404]

    scraped = scrape(client)

    predicted = [p for r in (single, batch) for p in r.json["predictions"] if "error" not in p]
    assert len(predicted) == 3
    verdict = {True: "true", False: "false", None: "unknown"}
    answered = collections.Counter((p["predicted_class"], verdict[p.get("in_distribution")]) for p in predicted)
    counted = {
        (s.labels["predicted_class"], s.labels["in_distribution"]): s.value
        for s in scraped
        if s.name == "galaxy_predictions_total"
    }
    assert counted == answered

    requests_total = "galaxy_http_requests_total"
    assert value(scraped, requests_total, route="/predict", method="POST", status="200") == 2
    assert value(scraped, requests_total, route="/predict", method="POST", status="415") == 1
    # The URL rule, not the raw path: ids never become label values.
    assert value(scraped, requests_total, route="/predictions/<raw_id>", method="GET", status="200") == 1
    assert value(scraped, requests_total, route="/predictions/<raw_id>", method="GET", status="400") == 1
    assert value(scraped, requests_total, route="unmatched", method="GET", status="404") == 1
    assert value(scraped, requests_total) == 6  # the scrape itself is not counted
    assert not [s for s in scraped if s.labels.get("route") in ("/metrics", stored_path, "/no/such/page")]

    latency = [
        s
        for s in scraped
        if s.name == "galaxy_http_request_duration_seconds_bucket" and s.labels["route"] == "/predict"
    ]
    assert value(scraped, "galaxy_http_request_duration_seconds_count", route="/predict") == 3
    assert [s.value for s in latency] == sorted(s.value for s in latency)  # cumulative buckets
    assert latency[-1].labels["le"] == "+Inf" and latency[-1].value == 3

    assert value(scraped, "galaxy_prediction_confidence_count") == 3
    assert value(scraped, "galaxy_prediction_confidence_sum") == pytest.approx(sum(p["confidence"] for p in predicted))
    assert value(scraped, "galaxy_prediction_confidence_bucket", le="1.0") == 3
    assert {s.labels["le"] for s in scraped if s.name == "galaxy_prediction_confidence_bucket"} == {
        "0.1",
        "0.2",
        "0.3",
        "0.4",
        "0.5",
        "0.6",
        "0.7",
        "0.8",
        "0.9",
        "1.0",
        "+Inf",
    }

    [info] = [s for s in scraped if s.name == "galaxy_model_info"]
    assert info.labels == {"model_version": single.json["predictions"][0]["model_version"]} and info.value == 1

    assert value(scrape(client), requests_total) == 6  # scrapes stay out of the request counter


def test_the_hook_labels_each_prediction_by_its_out_of_distribution_verdict(make_app, sqlite_url):
    from galaxylib.inference.classify import Classified
    from galaxylib.inference.predictor import Prediction
    from serve.metrics import observe_predictions

    app = make_app(sqlite_url)

    def classified(
        name: str, cls: str, confidence: float, in_distribution: bool | None, others: dict[str, float] | None = None
    ) -> Classified:
        return Classified(
            name,
            Prediction(
                class_index=0,
                predicted_class=cls,
                confidence=confidence,
                probabilities={cls: confidence, **(others or {})},
                model_version="v-test",
                ood_score=None if in_distribution is None else 1.0,
                in_distribution=in_distribution,
            ),
        )

    with app.app_context():
        observe_predictions(
            [
                classified("a", "Merging", 0.95, True),
                classified("b", "Merging", 0.55, False),
                classified("c", "Disturbed", 0.15, False, {"Round Smooth": 0.85}),
                classified("d", "Disturbed", 0.35, None),
                Classified("broken.jpg"),
            ]
        )  # no prediction: not counted
    scraped = scrape(app.test_client())

    total = "galaxy_predictions_total"
    assert value(scraped, total, predicted_class="Merging", in_distribution="true") == 1
    assert value(scraped, total, predicted_class="Merging", in_distribution="false") == 1
    assert value(scraped, total, predicted_class="Disturbed", in_distribution="false") == 1
    assert value(scraped, total, predicted_class="Disturbed", in_distribution="unknown") == 1
    assert value(scraped, total) == 4
    # The share flagged out of distribution, as docs/monitoring.md computes it.
    assert value(scraped, total, in_distribution="false") / value(scraped, total) == 0.5
    # The confidence is the reported class's probability (a class bias can report a class that is not
    # the most probable one: "c" is reported Disturbed at 0.15 beside Round Smooth at 0.85).
    buckets = {s.labels["le"]: s.value for s in scraped if s.name == "galaxy_prediction_confidence_bucket"}
    assert value(scraped, "galaxy_prediction_confidence_sum") == pytest.approx(0.95 + 0.55 + 0.15 + 0.35)
    assert (buckets["0.1"], buckets["0.2"], buckets["0.4"], buckets["0.6"], buckets["0.9"], buckets["1.0"]) == (
        0,
        1,
        2,
        3,
        3,
        4,
    )


def test_each_app_counts_alone_unknown_methods_share_one_label_and_no_model_still_answers(
    make_app, sqlite_url, tmp_path
):
    first = make_app(sqlite_url).test_client()
    assert first.get("/health").status_code == 200
    second = make_app(sqlite_url, model_path=str(tmp_path / "no-such-run")).test_client()  # no duplicate names

    scraped = scrape(second)

    assert value(scraped, "galaxy_http_requests_total") == 0
    assert not [s for s in scraped if s.name == "galaxy_model_info"]
    assert first.open("/health", method="BREW").status_code == 405
    scraped = scrape(first)
    assert value(scraped, "galaxy_http_requests_total", route="/health", method="GET", status="200") == 1
    assert value(scraped, "galaxy_http_requests_total", route="unmatched", method="other", status="405") == 1


# --- gunicorn: four processes, one sum -------------------------------------------------------------

ACCESS_FORMAT = "worker=%(p)s %(m)s %(U)s %(s)s"


def answered_by(server: Gunicorn, path: str) -> list[str]:
    """The worker of each access-log line for ``path`` (gunicorn writes it just after the response)."""
    return [
        line.split()[0] for line in server.log().splitlines() if line.startswith("worker=<") and line.split()[2] == path
    ]


def start_gunicorn(env: dict[str, str], workers: int, log_path: Path) -> Gunicorn:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # unless the test sets it: gunicorn.conf.py's own
        server = Gunicorn(
            {"GUNICORN_ACCESS_LOG": "-", "GUNICORN_CMD_ARGS": f"--access-logformat '{ACCESS_FORMAT}'", **env},
            workers=workers,
            log_path=log_path,
        )
    server.wait_until_serving(workers)
    return server


def http_scrape(server: Gunicorn) -> list:
    response = requests.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return samples(response.text)


def worker_metrics_dir(server: Gunicorn) -> Path:
    """The one folder every worker keeps its metric files open in (each has galaxy_model_info's from boot)."""
    import psutil

    dirs = {}
    for pid in server.worker_pids():
        dirs[pid] = {
            Path(f.path).parent
            for f in psutil.Process(pid).open_files()
            if Path(f.path).name == f"gauge_livemax_{pid}.db"
        }
    assert all(len(d) == 1 for d in dirs.values()) and len(set.union(*dirs.values())) == 1, dirs
    return next(iter(dirs.values())).pop()


@pytest.fixture(scope="module")
def metrics_postgres_url():
    with temporary_postgres_database() as url:
        yield url


@pytest.mark.slow
def test_four_gunicorn_workers_report_one_sum_whichever_answers_the_scrape(
    tiny_artifact, metrics_postgres_url, sample_files, tmp_path
):
    server = start_gunicorn(
        {
            "DATABASE_URL": metrics_postgres_url,
            "MODEL_PATH": str(tiny_artifact),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "GALAXY_NUM_THREADS": "1",
        },
        workers=4,
        log_path=tmp_path / "log",
    )
    try:
        folder = worker_metrics_dir(server)
        assert folder.is_dir() and folder.name.startswith("galaxy-prometheus-")
        cutouts = [(p.name, p.read_bytes()) for p in sample_files]

        def send(i: int) -> tuple[int, dict]:
            # A fresh connection per request (requests.post opens and closes its own session).
            files = [("file", NOT_AN_IMAGE if i % 8 == 7 else cutouts[i % len(cutouts)])]
            response = requests.post(f"{server.url}/predict", files=files, timeout=60)
            return response.status_code, response.json()

        sent = 40
        with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent, so idle workers take connections too
            results = list(pool.map(send, range(sent)))
        statuses = collections.Counter(status for status, _ in results)
        assert statuses == {200: 35, 415: 5}, statuses
        by_class = collections.Counter(
            body["predictions"][0]["predicted_class"] for status, body in results if status == 200
        )

        deadline = time.monotonic() + 10
        while len(answered_by(server, "/predict")) < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        served = collections.Counter(answered_by(server, "/predict"))
        assert sum(served.values()) == sent
        # With more than one worker holding part of the counts, no single worker's own registry could
        # report the total: each scrape below must sum the workers' files.
        assert len(served) > 1, served
        assert max(served.values()) < sent

        def check(scraped: list) -> None:
            assert value(scraped, "galaxy_http_requests_total") == sent
            assert value(scraped, "galaxy_http_requests_total", route="/predict", status="200") == 35
            assert value(scraped, "galaxy_http_requests_total", route="/predict", status="415") == 5
            assert value(scraped, "galaxy_http_request_duration_seconds_count", route="/predict") == sent
            counted = collections.Counter()
            for s in scraped:
                if s.name == "galaxy_predictions_total":
                    counted[s.labels["predicted_class"]] += s.value
            assert counted == by_class
            assert value(scraped, "galaxy_prediction_confidence_count") == 35
            [info] = [s for s in scraped if s.name == "galaxy_model_info"]  # one series, no pid label
            assert info.labels == {"model_version": results[0][1]["predictions"][0]["model_version"]}
            assert info.value == 1

        with ThreadPoolExecutor(max_workers=4) as pool:  # scrapes in parallel land on several workers
            for _ in range(3):
                for scraped in pool.map(lambda _: http_scrape(server), range(4)):
                    check(scraped)
        for _ in range(4):  # and one after another, on fresh connections
            check(http_scrape(server))

        # A worker that dies takes its live gauge with it (child_exit) but not its counts.
        victim = int(served.most_common(1)[0][0].removeprefix("worker=<").removesuffix(">"))
        os.kill(victim, signal.SIGTERM)
        server.wait_until_serving(5)  # its replacement booted
        assert victim not in server.worker_pids()
        assert not list(folder.glob(f"gauge_livemax_{victim}.db"))
        assert list(folder.glob(f"counter_{victim}.db"))
        check(http_scrape(server))
    finally:
        server.stop()
    assert not folder.exists()  # the temporary folder goes with the master


@pytest.mark.slow
def test_an_operators_metrics_folder_is_used_and_emptied_of_an_earlier_runs_files(tiny_artifact, sqlite_url, tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    # A file as a previous run's worker would have left it, written by prometheus_client itself.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from prometheus_client import Counter; Counter('galaxy_http_requests', 'old', "
            "['route', 'method', 'status']).labels('/predict', 'POST', '200').inc(1000)",
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        check=True,
        timeout=60,
    )
    assert list(folder.glob("counter_*.db"))

    server = start_gunicorn(
        {
            "DATABASE_URL": sqlite_url,
            "MODEL_PATH": str(tiny_artifact),
            "GALAXY_NUM_THREADS": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(folder),
        },
        workers=2,
        log_path=tmp_path / "log",
    )
    try:
        assert worker_metrics_dir(server) == folder
        assert requests.get(f"{server.url}/health", timeout=30).status_code == 200
        scraped = http_scrape(server)
        assert value(scraped, "galaxy_http_requests_total") == 1
        assert value(scraped, "galaxy_http_requests_total", route="/health", method="GET", status="200") == 1
    finally:
        server.stop()
    assert folder.is_dir()  # the operator's folder is left in place
