"""The fast multipart reader agrees with Werkzeug's parser, and leaves anything unusual to it."""

from __future__ import annotations

import io

import pytest
import requests
from werkzeug.wrappers import Request

from serve.multipart import Upload, split_files

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n" + b"\xff\xd9"


def werkzeug_files(body: bytes, content_type: str) -> list[Upload]:
    request = Request(
        {
            "REQUEST_METHOD": "POST",
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
    )
    return [Upload(field, f.filename, f.read()) for field in request.files for f in request.files.getlist(field)]


def fast_files(body: bytes, content_type: str) -> list[Upload] | None:
    request = Request({"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type})
    return split_files(body, request.mimetype_params.get("boundary", ""), max_parts=1000)


def encoded_by_requests(files, data=None) -> tuple[bytes, str]:
    prepared = requests.Request("POST", "http://127.0.0.1/predict", files=files, data=data).prepare()
    return prepared.body, prepared.headers["Content-Type"]


@pytest.mark.parametrize(
    "files, data",
    [
        ([("file", ("g10.jpg", JPEG))], None),
        ([("file", ("a.jpg", JPEG)), ("file", ("b.png", b"\x89PNG...")), ("files", ("c.jpg", b""))], None),
        ([("file", ("galaxie-é☆.jpg", JPEG))], None),
        ([("file", ('we"ird; name.jpg', JPEG))], None),
        ([("image", ("x.jpg", JPEG))], {"comment": "a plain field, not a file"}),
    ],
)
def test_bodies_from_the_requests_library_read_the_same_as_with_werkzeug(files, data):
    body, content_type = encoded_by_requests(files, data)

    fast = fast_files(body, content_type)

    assert fast is not None
    assert sorted(fast, key=repr) == sorted(werkzeug_files(body, content_type), key=repr)


def test_a_browser_style_body_reads_the_same_as_with_werkzeug():
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="g.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + JPEG
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename=""\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
        ).encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}"

    assert fast_files(body, content_type) == werkzeug_files(body, content_type)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b, bd: b"a preamble\r\n" + b,  # text before the first part
        lambda b, bd: b.replace(b"\r\n", b"\n"),  # bare LF line breaks
        lambda b, bd: b.replace(b"Content-Disposition: form-data;", b"Content-Disposition: form-data;\r\n\t"),
        lambda b, bd: b.replace(b"Content-Disposition", b"X-Other"),  # no disposition
        lambda b, bd: b[: b.rindex(b"--" + bd)],  # no closing delimiter
        lambda b, bd: b"",
    ],
)
def test_an_unusual_body_is_left_to_werkzeug(mangle):
    body, content_type = encoded_by_requests([("file", ("g.jpg", JPEG))])
    boundary = content_type.split("boundary=")[1].encode()

    assert fast_files(mangle(body, boundary), content_type) is None


def test_more_parts_than_allowed_are_left_to_werkzeug_to_refuse():
    body, content_type = encoded_by_requests([("file", (f"{i}.jpg", b"x")) for i in range(5)])
    boundary = content_type.split("boundary=")[1]

    assert split_files(body, boundary, max_parts=4) is None


def test_the_api_reads_a_body_the_fast_path_leaves_alone(make_app, sqlite_url, sample_files):
    client = make_app(sqlite_url).test_client()
    body, content_type = encoded_by_requests([("file", ("g.jpg", sample_files[0].read_bytes()))])
    body = b"preamble that only the full parser skips\r\n" + body

    response = client.post("/predict", data=body, content_type=content_type)

    assert response.status_code == 200
    assert response.json["predictions"][0]["filename"] == "g.jpg"
