"""Slow clients cannot starve the API: ``gunicorn serve.app:app`` with 2 workers.

A client that trickles its upload holds one of a worker's threads, not the worker; the body must
arrive within BODY_TIMEOUT_S, or the request ends with a JSON 408. Requests gunicorn cannot parse
are answered in JSON too.
"""

from __future__ import annotations

import json
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support import Gunicorn, temporary_postgres_database

pytestmark = pytest.mark.slow  # starts a gunicorn server

BODY_TIMEOUT_S = 25
TRICKLERS = 3


@pytest.fixture(scope="module")
def server(tiny_artifact, tmp_path_factory):
    with temporary_postgres_database() as url:
        server = Gunicorn(
            {
                "DATABASE_URL": url,
                "MODEL_PATH": str(tiny_artifact),
                "GALAXY_NUM_THREADS": "1",
                "BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            },
            workers=2,
            log_path=tmp_path_factory.mktemp("slow-clients") / "log",
        )
        server.wait_until_serving(2)
        yield server
        server.stop()


def http_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def trickle_upload(port: int, seconds_at_most: float = 90) -> tuple[bytes, float]:
    """POST /predict announcing a 200 kB body and sending one byte every half second, until the
    server answers; what it answered, and after how many seconds."""
    boundary = "slowclientboundary"
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 200000\r\n\r\n"
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n\r\n'
            ).encode()
        )
        answer = b""
        while time.monotonic() - start < seconds_at_most:
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                if b"\r\n\r\n" in answer:
                    _, headers, body = http_response(answer)
                    if len(body) >= int(headers.get("content-length", "0")):
                        break
                continue
            try:
                sock.send(b"x")
            except OSError:
                break
        return answer, time.monotonic() - start


def test_three_trickling_uploads_neither_block_other_clients_nor_last_past_the_body_timeout(server, sample_files):
    with ThreadPoolExecutor(max_workers=TRICKLERS) as slow:
        tricklers = [slow.submit(trickle_upload, server.port) for _ in range(TRICKLERS)]
        time.sleep(2)  # the slow uploads have started and hold their threads

        def classify(i: int) -> int:
            sample = sample_files[i % len(sample_files)]
            response = requests.post(
                f"{server.url}/predict", files={"file": (sample.name, sample.read_bytes())}, timeout=5
            )
            return response.status_code

        with ThreadPoolExecutor(max_workers=8) as others:
            statuses = list(others.map(classify, range(8)))
        assert statuses == [200] * 8, server.log()[-3000:]
        assert all(not t.done() for t in tricklers)  # still trickling while the others were served

        for trickler in tricklers:
            raw, seconds = trickler.result()
            status, headers, body = http_response(raw)
            assert status == 408 and headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert error["code"] == "request_timeout" and "did not arrive within 25 s" in error["message"]
            assert seconds < BODY_TIMEOUT_S + 15


def test_a_request_gunicorn_itself_refuses_gets_a_json_error(server):
    """Both Content-Length and Transfer-Encoding (request smuggling): gunicorn answers before the
    app sees the request, in the API's error shape."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status, headers, body = http_response(raw)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"
