"""What a stand-in received or sent, kept in memory for tests and for a human to look at.

Each stand-in keeps several `Outbox` lists (e.g. messages, rejected requests, callback
deliveries) and publishes them: `GET /_outbox` (HTML), `GET /_outbox.json` (the primary
list), `GET /_outbox/{name}.json`, `GET /_outbox/all.json`, `DELETE /_outbox`.
"""
from __future__ import annotations

import html
import json
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse


class Outbox:
    """Thread-safe list of records. Records are dicts, or objects with `as_dict()` whose
    content may still change (a webhook delivery gains attempts); call `touch()` then."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._changed = threading.Condition()

    def add(self, item: Any) -> Any:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()
        return item

    def touch(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def clear(self) -> None:
        with self._changed:
            self._items.clear()
            self._changed.notify_all()

    def items(self) -> list[dict]:
        with self._changed:
            raw = list(self._items)
        return [i.as_dict() if hasattr(i, "as_dict") else dict(i) for i in raw]

    def items_since(self, start: int) -> list[dict]:
        """Records from position `start` on (cheap polling for long-running observers)."""
        with self._changed:
            raw = self._items[start:]
        return [i.as_dict() if hasattr(i, "as_dict") else dict(i) for i in raw]

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    def wait_for(self, predicate: Callable[[list[dict]], Any], timeout: float = 5.0) -> Any:
        """Block until predicate(items) is truthy and return its value (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate(self.items())
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met within {timeout}s; items: {self.items()!r}"[:2000])
                # Bounded wait: records mutated without touch() are still noticed.
                self._changed.wait(min(left, 0.05))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    return html.escape(value)


def render_outbox_page(title: str, sections: Mapping[str, list[dict]], columns: Mapping[str, Iterable[str]]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font:14px sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}"
        "td{max-width:40em;white-space:pre-wrap;word-break:break-word}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p><a href='/_outbox/all.json'>JSON</a></p>",
    ]
    for name, rows in sections.items():
        cols = list(columns.get(name, ())) or sorted({k for r in rows for k in r})
        parts.append(f"<h2>{html.escape(name)} ({len(rows)})</h2>")
        if not rows:
            parts.append("<p>nothing yet</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for row in reversed(rows):  # newest first: that is what a person looks for
            parts.append("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def add_outbox_routes(app: FastAPI, title: str, outboxes: Mapping[str, Outbox], columns: Mapping[str, Iterable[str]]) -> None:
    """The first outbox is the primary one (what the vendor accepted): `/_outbox.json` is
    that list alone; `/_outbox/{name}.json` any one list; `/_outbox/all.json` all of them."""
    primary = next(iter(outboxes))

    @app.get("/_outbox", response_class=HTMLResponse, include_in_schema=False)
    def outbox_page() -> str:
        return render_outbox_page(title, {n: o.items() for n, o in outboxes.items()}, columns)

    @app.get("/_outbox.json", tags=["stand-in control"])
    def outbox_json() -> list[dict]:
        return outboxes[primary].items()

    @app.get("/_outbox/all.json", tags=["stand-in control"])
    def outbox_all_json() -> dict[str, list[dict]]:
        return {n: o.items() for n, o in outboxes.items()}

    @app.get("/_outbox/{name}.json", tags=["stand-in control"])
    def outbox_section_json(name: str) -> list[dict]:
        if name not in outboxes:
            raise HTTPException(404, f"no outbox {name!r}; there are {sorted(outboxes)}")
        return outboxes[name].items()

    @app.delete("/_outbox", status_code=204, tags=["stand-in control"])
    def outbox_clear() -> None:
        for o in outboxes.values():
            o.clear()
