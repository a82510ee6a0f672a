"""Reads a multipart/form-data body while it streams in, keeping only what a route needs:
the text fields (as bytes, each up to a cap) and the names of the file parts, whose
content is counted and dropped. An email posted with 25 MB of photos therefore costs the
receiver no memory for the photos. (Starlette's form parser would spool the files to
disk and decode every field as UTF-8; SendGrid names each field's character set.)

The streaming parser is python-multipart's, the one Starlette itself uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from webhook_receiver.errors import ApiError


@dataclass
class FormParts:
    fields: dict[str, bytes] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # file names (or field names), in order


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)


async def read_multipart(request: Request, *, field_limits: dict[str, int], default_limit: int,
                         max_parts: int = 1000) -> FormParts:
    """The form's fields and file names. 415 if the body is not multipart/form-data,
    400 if it is malformed or cut short, 413 if a field or the part count is too large
    (the body's total size is capped by the receiver's guard before this runs)."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed_multipart", "the multipart Content-Type has no boundary")

    parts = FormParts()
    current = _Part()
    state = {"count": 0, "ended": False}

    def on_part_begin():
        nonlocal current
        current = _Part()
        state["count"] += 1
        if state["count"] > max_parts:
            raise ApiError(413, "too_many_parts", f"at most {max_parts} form parts")

    def on_header_field(data, start, end):
        current.header_field += data[start:end]

    def on_header_value(data, start, end):
        current.header_value += data[start:end]

    def on_header_end():
        current.headers[bytes(current.header_field).decode("latin-1").strip().lower()] = bytes(current.header_value)
        current.header_field.clear()
        current.header_value.clear()

    def on_headers_finished():
        _, disposition = parse_options_header(current.headers.get("content-disposition", b""))
        current.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        current.filename = filename.decode("utf-8", "replace") if filename is not None else None

    def on_part_data(data, start, end):
        if current.filename is not None:
            return  # a file: only its name is kept
        limit = field_limits.get(current.name, default_limit)
        if len(current.data) + (end - start) > limit:
            raise ApiError(413, "field_too_large", f"form field {current.name!r} is larger than {limit} bytes")
        current.data += data[start:end]

    def on_part_end():
        if current.filename is not None:
            parts.files.append(current.filename or current.name)
        elif current.name and current.name not in parts.fields:
            parts.fields[current.name] = bytes(current.data)

    def on_end():
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
    })
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        raise ApiError(400, "malformed_multipart", "the body is not well-formed multipart/form-data") from None
    if not state["ended"]:
        raise ApiError(400, "malformed_multipart", "the multipart body ends before its closing boundary")
    return parts
