"""The connection of the client commands to one ChatForge server: base URL and API key, the official openai
SDK for OpenAI's routes, httpx2 for ChatForge's additions (the live job event stream, pause and resume),
and the server's error messages in its own words. Nothing here opens the database or the storage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

import httpx2 as httpx
import typer

DEFAULT_BASE_URL = "http://127.0.0.1:8000"

BaseUrl = Annotated[str, typer.Option("--base-url", envvar="CHATFORGE_BASE_URL", help="server URL")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="CHATFORGE_API_KEY", show_default=False,
                                            help="API key of your project")]


class ClientError(Exception):
    """A problem to print as `error: ...` with exit code 1 (bad input, server refusal)."""


class Server:
    """One server: base URL and key, an openai client for OpenAI's routes, httpx2 for the rest."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        if not api_key:
            raise ClientError("no API key: pass --api-key or set CHATFORGE_API_KEY")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self._openai = None

    @property
    def openai(self):
        if self._openai is None:
            import openai

            self._openai = openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key, max_retries=1,
                                         timeout=httpx.Timeout(600, connect=10))
        return self._openai

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def request(self, method: str, path: str, **kw) -> dict:
        try:
            r = httpx.request(method, self.base_url + "/v1" + path, headers=self.headers, timeout=60, **kw)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach {self.base_url}: {e}") from None
        if r.status_code >= 400:
            raise ClientError(error_message(r))
        return r.json()

    def events(self, job_id: str, after: str | None = None) -> Iterator[tuple[str, dict]]:
        """(event name, data) from the job's server-sent event stream until the server closes it."""
        params = {"stream": "true", **({"after": after} if after else {})}
        timeout = httpx.Timeout(10, read=120)  # the server pings every 10 s
        with httpx.stream("GET", f"{self.base_url}/v1/fine_tuning/jobs/{job_id}/events", params=params,
                          headers={**self.headers, "Accept": "text/event-stream"}, timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                raise ClientError(error_message(r))
            name, data = "message", []
            for line in r.iter_lines():
                if line == "":
                    if data:
                        yield name, json.loads("\n".join(data))
                    name, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)


def connect(base_url: str, api_key: str | None) -> Server:
    return Server(base_url or DEFAULT_BASE_URL, api_key)


def error_message(r) -> str:
    try:
        err = r.json().get("error") or {}
        return err.get("message") or r.text
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"


def openai_errors() -> type[Exception]:
    import openai

    return openai.APIError


def openai_message(e: Exception) -> str:
    """The server's own message from an openai SDK error (without the SDK's "Error code: 400 - " prefix)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return getattr(e, "message", None) or str(e)
