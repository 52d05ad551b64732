"""Commands that talk to a running server: the ``--url``/``--api-key`` options and one client.

Registry and release commands go through the server's HTTP API, never straight to the database:
four-eyes approval has to see each person's own key, and validation runs through the server's
gateway. Invariant: :meth:`Remote.call` either returns the decoded JSON of a 2xx reply, or
prints why not (the server's own message and code) and exits with status 1.

Also here: reading the command-line values these commands share (durations, ``KEY=VALUE``
pairs) and turning values into table cells.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from types import TracebackType
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from openautoglm.cli.common import err
from openautoglm.core.version import __version__

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 30.0

UrlOption = Annotated[
    str, typer.Option("--url", envvar="AUTOGLM_URL", help="base URL of the running server")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="AUTOGLM_API_KEY", help="your API key (required)", show_default=False
    ),
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Remote:
    """An HTTP client for one server and one API key; a context manager that closes itself."""

    def __init__(
        self, url: str, api_key: str, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"autoglm-cli/{__version__}",
            },
            timeout=TIMEOUT_S,
            transport=transport,
        )

    def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request; return its JSON, or print the error and exit with status 1."""
        response = self._send(method, path, json, params)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            fail(f"the server at {self.url} sent a reply that is not JSON")
            raise typer.Exit(1) from exc

    def fetch(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        """GET a reply that is not JSON (a graph, say); errors as :meth:`call` reports them."""
        return self._send("GET", path, None, params).content

    def _send(
        self, method: str, path: str, json: Any, params: dict[str, Any] | None
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.ConnectError as exc:
            fail(f"cannot reach the server at {self.url}: is `autoglm serve` running?")
            raise typer.Exit(1) from exc
        except httpx.TimeoutException as exc:
            fail(f"the server at {self.url} did not answer within {TIMEOUT_S:g} s")
            raise typer.Exit(1) from exc
        except httpx.HTTPError as exc:
            fail(f"request to {self.url} failed: {exc}")
            raise typer.Exit(1) from exc
        if response.is_error:
            message, code = _error_of(response)
            fail(f"{message} ({code})")
            raise typer.Exit(1)
        return response

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def connect(url: str, api_key: str | None) -> Remote:
    """A client for ``url``, or a message and exit status 2 when the key or URL is unusable."""
    if not api_key:
        fail("no API key: pass --api-key or set AUTOGLM_API_KEY")
        raise typer.Exit(2)
    if not url.startswith(("http://", "https://")):
        fail(f"--url must start with http:// or https://, got {url!r}")
        raise typer.Exit(2)
    return Remote(url, api_key)


def fail(message: str) -> None:
    """Print ``error: message`` in red on stderr (the message is shown as is, never as markup)."""
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The message and code of an OpenAI-style error body, or what the status line says."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code") or error.get("type") or response.status_code
        return str(error["message"]), str(code)
    text = response.text.strip()[:200] or response.reason_phrase
    return f"HTTP {response.status_code}: {text}", str(response.status_code)


# -- command-line values -----------------------------------------------------------------------


def parse_duration(text: str | int) -> int:
    """Whole seconds from ``"90"``, ``"30s"``, ``"1m"``, ``"2h"`` or ``"1d"`` (at least 1).

    An ``int`` is taken as seconds already (Typer passes option defaults through here too).
    """
    if isinstance(text, int):
        seconds = text
    else:
        match = _DURATION.match(text)
        if match is None:
            raise typer.BadParameter(f"{text!r} is not a duration like 90, 30s, 1m or 2h")
        seconds = round(float(match.group(1)) * _UNIT_S[match.group(2).lower()])
    if seconds < 1:
        raise typer.BadParameter(f"{text!r}: a duration must be at least 1 second")
    return seconds


def duration_option(default: str, help: str) -> Any:
    """A Typer option read by :func:`parse_duration`; ``default`` is how its default is shown."""
    return typer.Option(parser=parse_duration, metavar="DURATION", show_default=default, help=help)


def parse_pairs(items: list[str] | None, option: str, *, typed: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict; with ``typed``, a value that is JSON (``20``, ``0.5``,
    ``true``, ``null``) is decoded and anything else stays a string."""
    pairs: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs[key.strip()] = _scalar(value) if typed else value
    return pairs


def _scalar(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


# -- display -----------------------------------------------------------------------------------


def cell(value: object) -> Text:
    """A table cell that shows ``value`` literally (server data is never read as markup)."""
    if value is None or (isinstance(value, str | dict | list) and not value):
        return Text("-", style="dim")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, ensure_ascii=False))
    return Text(str(value))


def fields(*rows: tuple[str, object]) -> Table:
    """Labelled values, one per line, label in bold."""
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        grid.add_row(Text(label, style="bold"), value if isinstance(value, Text) else cell(value))
    return grid


def number(value: float | None) -> str:
    """A metric for people: four significant digits, ``-`` when missing."""
    return "-" if value is None else f"{value:.4g}"


def when(unix: int | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``, ``-`` when missing."""
    return "-" if unix is None else datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")
