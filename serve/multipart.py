"""Reading the uploaded files of a multipart/form-data request, fast.

Werkzeug's general parser compiles two regular expressions per request (the
boundary is random, so its cache never hits): ~0.9 ms, an eighth of the
224 px forward pass it sits in front of. Uploads from curl, requests and
browsers are all plain CRLF-delimited parts, so this module splits those with
``bytes.split`` (~0.07 ms). Anything unusual (a preamble, bare-LF line breaks,
folded headers, a missing Content-Disposition) makes ``split_files`` return
None, and the caller falls back to Werkzeug, which stays the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.http import parse_options_header


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str | None  # None for a plain form field (not a file)
    data: bytes


def split_files(body: bytes, boundary: str, max_parts: int) -> list[Upload] | None:
    """Every file part of a well-formed body, in order; None if the body needs the full parser."""
    if not boundary or len(boundary) > 200:
        return None
    delimiter = b"--" + boundary.encode("latin-1")
    if not body.startswith(delimiter + b"\r\n"):
        return None
    segments = body[len(delimiter) :].split(b"\r\n" + delimiter)
    if len(segments) - 1 > max_parts or not segments[-1].startswith(b"--"):
        return None
    uploads = []
    for segment in segments[:-1]:
        if not segment.startswith(b"\r\n"):
            return None  # e.g. "--boundaryX": the boundary was a prefix of a longer line
        end = segment.find(b"\r\n\r\n", 2)
        if end < 0:
            return None
        disposition = None
        for line in segment[2:end].split(b"\r\n"):
            if line[:1] in (b" ", b"\t") or b"\n" in line or b"\r" in line:
                return None  # folded or oddly broken headers
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-disposition":
                try:
                    disposition = value.decode().strip()
                except UnicodeDecodeError:
                    return None
        if disposition is None:
            return None
        kind, options = parse_options_header(disposition)
        if kind != "form-data" or "name" not in options:
            return None
        uploads.append(Upload(options["name"], options.get("filename"), segment[end + 4 :]))
    return [u for u in uploads if u.filename is not None]
