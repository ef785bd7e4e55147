"""Reading the uploaded files of a multipart/form-data request, fast.

Werkzeug's general parser compiles two regular expressions per request (the
boundary is random, so its cache never hits): ~0.9 ms, an eighth of the
224 px forward pass it sits in front of. Uploads from curl, requests and
browsers are all plain CRLF-delimited parts, so this module splits those with
``bytes.split`` (~0.07 ms). Anything unusual (a preamble, bare-LF line breaks,
folded headers, a missing Content-Disposition, the boundary inside a part, a
body near one of the parser's limits) makes ``split_files`` return None, and
``read_files`` falls back to Werkzeug, which stays the reference: the two give
the same files, or the same error (tests/test_serve_multipart.py checks it on
generated bodies).

Werkzeug answers both of its form limits (parts per body, bytes per form field)
with a bare 413 that Flask would describe as an over-size body; ``read_files``
says which limit it was (``FormLimitError``, a JSON 413 like every ApiError).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Epilogue, Field, File, MultipartDecoder, NeedData

from serve.errors import ApiError

# Werkzeug reads a body in chunks of 64 KiB and refuses one whose headers, preamble or epilogue
# (buffered whole, with the next chunk) outgrow max_form_memory_size. Real clients send a few
# hundred bytes of each, so the fast path takes at most MAX_FAST_FRAMING_BYTES of them, and only
# under a field limit of FAST_MIN_FIELD_LIMIT or more (Flask's default is 500 kB): anything else
# is Werkzeug's to answer, and it answers exactly as it would without the fast path.
WERKZEUG_CHUNK = 64 * 1024
MAX_FAST_FRAMING_BYTES = 16 * 1024
FAST_MIN_FIELD_LIMIT = WERKZEUG_CHUNK + 2 * MAX_FAST_FRAMING_BYTES


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str | None  # None for a plain form field (not a file)
    data: bytes


class FormLimitError(ApiError):
    """A multipart body over one of the form parser's limits, named, with the limit."""

    def __init__(self, code: str, message: str):
        super().__init__(413, code, message)


def too_many_parts(max_parts: int) -> FormLimitError:
    return FormLimitError(
        "too_many_parts",
        f"the request has more than {max_parts:,} multipart parts (files and form fields together); "
        f"the limit is {max_parts:,}",
    )


def form_field_too_large(max_field_size: int) -> FormLimitError:
    return FormLimitError(
        "form_field_too_large",
        f"a multipart form field (a part that is not a file) is over the limit of {max_field_size:,} bytes",
    )


def split_files(
    body: bytes, boundary: str, max_parts: int | None, max_field_size: int | None = None
) -> list[Upload] | None:
    """Every file part of a well-formed body, in order; None if the body needs the full parser.

    ``max_parts`` and ``max_field_size`` are Werkzeug's limits (None: none); a body over either is
    left to it, so that the error is the same whichever way the body was framed.
    """
    if not boundary or len(boundary) > 200:
        return None
    if max_field_size is not None and max_field_size < FAST_MIN_FIELD_LIMIT:
        return None
    try:
        delimiter = b"--" + boundary.encode("ascii")  # Werkzeug takes an ASCII boundary only
    except UnicodeEncodeError:
        return None
    if not body.startswith(delimiter + b"\r\n"):
        return None
    segments = body[len(delimiter) :].split(b"\r\n" + delimiter)
    if (max_parts is not None and len(segments) - 1 > max_parts) or not segments[-1].startswith(b"--"):
        return None
    if len(segments[-1]) > MAX_FAST_FRAMING_BYTES:
        return None  # a long epilogue
    if body.count(delimiter) != len(segments):
        return None  # the boundary also occurs inside a part, e.g. after a bare LF: Werkzeug's call
    uploads = []
    for segment in segments[:-1]:
        if not segment.startswith(b"\r\n"):
            return None  # e.g. "--boundaryX": the boundary was a prefix of a longer line
        end = segment.find(b"\r\n\r\n", 2)
        if end < 0 or end > MAX_FAST_FRAMING_BYTES:
            return None
        disposition = None
        for line in segment[2:end].split(b"\r\n"):
            if line[:1] in (b" ", b"\t") or b"\n" in line or b"\r" in line:
                return None  # folded or oddly broken headers
            try:
                name, _, value = line.decode().partition(":")  # Werkzeug decodes every header line
            except UnicodeDecodeError:
                return None
            if name.strip(" \t").lower() == "content-disposition" and disposition is None:
                disposition = value.strip(" \t")  # the first one counts, as in Werkzeug's Headers
        if disposition is None:
            return None
        kind, options = parse_options_header(disposition)
        if kind != "form-data" or "name" not in options:
            return None
        data = segment[end + 4 :]
        filename = options.get("filename")
        if filename is None and max_field_size is not None and len(data) > max_field_size:
            return None  # over Werkzeug's limit for a form field: its error, said by read_files
        uploads.append(Upload(options["name"], filename, data))
    return [u for u in uploads if u.filename is not None]


def parse_files(body: bytes, boundary: str, max_parts: int | None, max_field_size: int | None) -> list[Upload]:
    """Every file part, as Werkzeug's form parser reads it (``request.files``, on this body).

    Like ``request.files``, a body it cannot make sense of gives no files; its two limits raise
    ``FormLimitError``.
    """
    # cls=list: the (field, FileStorage) pairs in body order (a MultiDict groups them by field).
    parser = FormDataParser(max_form_memory_size=max_field_size, max_form_parts=max_parts, cls=list)  # type: ignore[arg-type]
    try:
        _, _, files = parser.parse(io.BytesIO(body), "multipart/form-data", len(body), {"boundary": boundary})
    except RequestEntityTooLarge:
        if max_parts is not None and _has_more_parts(body, boundary, max_parts):
            raise too_many_parts(max_parts) from None
        raise form_field_too_large(max_field_size or 0) from None
    return [Upload(field, f.filename, f.read()) for field, f in files]


def read_files(body: bytes, boundary: str, max_parts: int | None, max_field_size: int | None) -> list[Upload]:
    """The file parts of a multipart body: the fast split when it applies, else Werkzeug's parser."""
    uploads = split_files(body, boundary, max_parts, max_field_size)
    return uploads if uploads is not None else parse_files(body, boundary, max_parts, max_field_size)


def _has_more_parts(body: bytes, boundary: str, max_parts: int) -> bool:
    """Whether Werkzeug's decoder, without limits, finds more than ``max_parts`` parts in ``body``.

    Which of its limits a bare 413 came from: the same decoder counts again, and stops at
    ``max_parts + 1``, so this costs no more than the parse that was refused.
    """
    decoder = MultipartDecoder(boundary.encode("ascii"))
    parts = 0
    try:
        for start in [*range(0, len(body), WERKZEUG_CHUNK), None]:
            decoder.receive_data(None if start is None else body[start : start + WERKZEUG_CHUNK])
            event = decoder.next_event()
            while not isinstance(event, NeedData):
                if isinstance(event, Epilogue):
                    return False
                if isinstance(event, (Field, File)):
                    parts += 1
                    if parts > max_parts:
                        return True
                event = decoder.next_event()
    except ValueError:  # a malformed body: no more parts than counted so far
        pass
    return False
