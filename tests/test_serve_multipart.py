"""The fast multipart reader agrees with Werkzeug's parser, and leaves anything unusual to it."""

from __future__ import annotations

import io
import urllib.parse

import pytest
import requests
from flask import request
from hypothesis import event, given, settings
from hypothesis import strategies as st
from support import row_count
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request

from serve.multipart import FormLimitError, Upload, read_files, split_files

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


# --- the form parser's limits: a JSON 413 that names the limit, whichever way the body is framed ---


def many_fields_body(count: int, file: bytes) -> tuple[bytes, str]:
    """One image and ``count`` small form fields: ~0.8 MB for 5,000, well under MAX_UPLOAD_MB."""
    return encoded_by_requests([("file", ("g.jpg", file))], {f"note{i}": "x" * 80 for i in range(count)})


@pytest.mark.parametrize("framing", ["as clients send it", "with a preamble (Werkzeug's parser)"])
def test_too_many_form_parts_is_a_413_that_says_so(make_app, sqlite_url, sample_files, framing):
    client = make_app(sqlite_url).test_client()
    body, content_type = many_fields_body(5000, sample_files[0].read_bytes())
    if framing != "as clients send it":
        body = b"a preamble only the full parser skips\r\n" + body
    assert len(body) < 1024 * 1024  # not an over-size body: 16 MB is the limit

    response = client.post("/predict", data=body, content_type=content_type)

    assert response.status_code == 413
    assert response.json == {
        "error": {
            "code": "too_many_parts",
            "message": "the request has more than 1,000 multipart parts (files and form fields together); "
            "the limit is 1,000",
        }
    }
    assert row_count(sqlite_url) == 0


@pytest.mark.parametrize("framing", ["as clients send it", "with a preamble (Werkzeug's parser)"])
def test_a_form_field_over_the_parsers_limit_is_a_413_that_says_so(make_app, sqlite_url, sample_files, framing):
    """Werkzeug refuses a non-file field over 500,000 bytes; the fast path used to let it through."""
    client = make_app(sqlite_url).test_client()
    body, content_type = encoded_by_requests(
        [("file", ("g.jpg", sample_files[0].read_bytes()))], {"comment": "y" * 600_000}
    )
    if framing != "as clients send it":
        body = b"a preamble only the full parser skips\r\n" + body

    response = client.post("/predict", data=body, content_type=content_type)

    assert response.status_code == 413
    assert response.json["error"] == {
        "code": "form_field_too_large",
        "message": "a multipart form field (a part that is not a file) is over the limit of 500,000 bytes",
    }
    assert row_count(sqlite_url) == 0


def test_a_form_read_anywhere_else_never_calls_a_small_body_over_the_upload_limit(make_app, sqlite_url):
    """The app-wide 413 handler tells Werkzeug's form limits from MAX_UPLOAD_MB by the body's length."""
    app = make_app(sqlite_url)
    app.add_url_rule("/form-echo", "form_echo", lambda: {"fields": len(request.form)}, methods=["POST"])
    body, content_type = many_fields_body(2000, b"x")

    response = app.test_client().post("/form-echo", data=body, content_type=content_type)

    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"
    assert response.json["error"]["message"] == (
        "the request body is within the upload limit of 16 MB but over a limit of the form parser "
        "(at most 1,000 multipart parts and form fields of at most 500,000 bytes)"
    )


# --- property: on generated bodies the fast path and the app's reader agree with Werkzeug -------

# RFC 2046 boundary characters (a space is allowed, but not last).
BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # any encodable text
ODD_NAMES = st.sampled_from(['we"ird.jpg', "a;b=c.png", "gal\\axy.jpg", "é☆ 𝔤.png", "", " sp ace ", "%22.jpg"])
# Werkzeug's max_form_memory_size in these tests: small, to be crossed cheaply, yet above the 64 KiB
# chunks Werkzeug reads in (Flask's default is 500 kB).
FIELD_LIMIT = 100_000


def quoted(value: str, style: str) -> str:
    """A parameter value as different clients write it."""
    if style == "escaped":  # curl, Werkzeug's own encoder
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if style == "html5":  # browsers, requests/urllib3
        return '"' + value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A") + '"'
    return '"' + value + '"'  # careless: quotes and semicolons left raw


@st.composite
def parts(draw, boundary: bytes) -> tuple[list[bytes], bytes, bool]:
    """One part: its header lines, its data, and whether it is a file."""
    is_file = draw(st.booleans())
    style = draw(st.sampled_from(["escaped", "html5", "raw"]))
    field = draw(st.sampled_from(["file", "files", "note"]) | TEXT)
    disposition = f"form-data; name={quoted(field, style)}"
    if is_file:
        filename = draw(ODD_NAMES | TEXT)
        disposition += f"; filename={quoted(filename, style)}"
        if draw(st.booleans()):
            disposition += "; filename*=UTF-8''" + urllib.parse.quote(filename)
    header_name = draw(st.sampled_from(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"]))
    headers = [f"{header_name}: {disposition}".encode()]
    if draw(st.booleans()):
        headers.append(b"Content-Type: " + draw(st.sampled_from([b"image/jpeg", b"application/octet-stream"])))
    if draw(st.integers(0, 9)) == 0:  # a second, different disposition: the first one counts
        headers.append(b'Content-Disposition: form-data; name="other"; filename="second.jpg"')
    pieces = st.sampled_from(
        [b"\r\n", b"\n", b"\r", b"--", b"\r\n--" + boundary, b"\n--" + boundary + b"\r\n", b"\xff\xd8"]
    )
    data = b"".join(draw(st.lists(pieces | st.binary(max_size=24), max_size=4)))
    if draw(st.integers(0, 4)) == 0:  # at the form-field limit, or a byte over
        data = b"y" * (FIELD_LIMIT + draw(st.integers(0, 1)))
    return headers, data, is_file


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str, int]:
    """(body, Content-Type, max parts): usual and unusual framings."""
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=40).filter(lambda b: not b.endswith(" ")))
    raw = boundary.encode()
    written = draw(st.lists(parts(raw), max_size=5))
    framing = draw(st.sampled_from(["crlf"] * 6 + ["lf", "preamble", "epilogue", "padding", "unclosed", "bare close"]))
    nl = b"\n" if framing == "lf" else b"\r\n"
    out = [b"a preamble\r\n" if framing == "preamble" else b""]
    for headers, data, _ in written:
        out.append(b"--" + raw + (b" \t" if framing == "padding" else b"") + nl)
        out.extend(line + nl for line in headers)
        out.extend([nl, data, nl])
    if framing != "unclosed":
        out.append(b"--" + raw + b"--" + (b"" if framing == "bare close" else nl))
    if framing == "epilogue":
        out.append(b"an epilogue\r\n")
    return b"".join(out), f'multipart/form-data; boundary="{boundary}"', draw(st.integers(1, 6) | st.just(1000))


def by_field(uploads: list[Upload]) -> dict[str, list[Upload]]:
    """Uploads grouped as Werkzeug's ``request.files`` (a MultiDict) lists them."""
    grouped: dict[str, list[Upload]] = {}
    for upload in uploads:
        grouped.setdefault(upload.field, []).append(upload)
    return grouped


def werkzeug_reads(body: bytes, content_type: str, max_parts: int | None, max_field: int | None) -> list[Upload] | str:
    """Werkzeug's own answer: ``request.files``, or "413" when it refuses the body."""
    request = Request(
        {
            "REQUEST_METHOD": "POST",
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
    )
    request.max_form_parts, request.max_form_memory_size = max_parts, max_field
    try:
        files = request.files
    except RequestEntityTooLarge:
        return "413"
    return [Upload(field, f.filename, f.read()) for field in files for f in files.getlist(field)]


@given(multipart_bodies())
@settings(max_examples=100)
def test_on_generated_bodies_the_app_reads_the_same_files_as_werkzeug_or_the_same_refusal(case):
    body, content_type, max_parts = case
    boundary = Request({"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type}).mimetype_params["boundary"]
    expected = werkzeug_reads(body, content_type, max_parts, FIELD_LIMIT)

    fast = split_files(body, boundary, max_parts, FIELD_LIMIT)
    try:
        read = read_files(body, boundary, max_parts, FIELD_LIMIT)
    except FormLimitError as exc:
        read = exc

    event(
        f"refused: {read.code}"
        if isinstance(read, FormLimitError)
        else "read by the fast path"
        if fast is not None
        else "read by Werkzeug"
    )
    if expected == "413":
        assert fast is None  # the fast path never accepts what Werkzeug refuses
        assert isinstance(read, FormLimitError)
        assert read.status == 413
        # The error names the limit Werkzeug enforced: with that one lifted, it accepts the body.
        if werkzeug_reads(body, content_type, None, FIELD_LIMIT) != "413":
            assert read.code == "too_many_parts"
        if werkzeug_reads(body, content_type, max_parts, None) != "413":
            assert read.code == "form_field_too_large"
    else:
        assert fast is None or by_field(fast) == by_field(expected)
        assert not isinstance(read, FormLimitError), read.message
        assert by_field(read) == by_field(expected)


@given(
    st.lists(
        st.tuples(st.sampled_from(["file", "files"]) | TEXT, ODD_NAMES | TEXT, st.binary(max_size=64)),
        min_size=1,
        max_size=5,
    ),
    st.dictionaries(TEXT, TEXT, max_size=3),
)
@settings(max_examples=50)
def test_whatever_the_requests_library_sends_takes_the_fast_path(files, fields):
    """The property above would hold if split_files always gave up; on what clients send it never does."""
    body, content_type = encoded_by_requests([(field, (name, data)) for field, name, data in files], fields)

    fast = fast_files(body, content_type)

    assert fast is not None
    assert by_field(fast) == by_field(werkzeug_files(body, content_type))


def test_werkzeugs_parser_keeps_the_upload_order_across_both_field_names():
    """The fallback lists files as they came, like the fast path (request.files groups them by field)."""
    body, content_type = encoded_by_requests(
        [("file", ("a.jpg", b"1")), ("files", ("b.jpg", b"2")), ("file", ("c.jpg", b"3"))]
    )
    boundary = content_type.split("boundary=")[1]

    read = read_files(b"a preamble\r\n" + body, boundary, max_parts=1000, max_field_size=500_000)

    assert [u.filename for u in read] == ["a.jpg", "b.jpg", "c.jpg"]
