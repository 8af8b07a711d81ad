"""`chatforge chat MODEL`: a streaming conversation with a model over the chat completions API; interactive
on a terminal (/exit quits, /reset starts over), one turn per line when stdin is piped.
"""

from __future__ import annotations

import sys
from typing import Annotated, TextIO

import typer

from chatforge.client.output import client_command
from chatforge.client.server import (
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    Server,
    connect,
    openai_errors,
    openai_message,
)


class ChatSession:
    """One conversation with a model: each ask() streams the reply and keeps both turns in `messages`."""

    def __init__(self, srv: Server, model: str, *, system: str | None = None, temperature: float = 0.7,
                 top_p: float = 1.0, max_tokens: int = 512) -> None:
        self.srv, self.model, self.system = srv, model, system
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.messages: list[dict[str, str]] = []
        self.last_usage: dict[str, int] | None = None
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str, out: TextIO | None = None) -> str:
        """Send one user turn, write the reply to `out` (stdout) as it streams, return it."""
        out = out or sys.stdout
        self.messages.append({"role": "user", "content": text})
        parts: list[str] = []
        try:
            stream = self.srv.openai.chat.completions.create(
                model=self.model, messages=self.messages, stream=True, stream_options={"include_usage": True},
                **self.sampling)
            for chunk in stream:
                if chunk.usage is not None:
                    self.last_usage = chunk.usage.model_dump()
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                    out.write(parts[-1])
                    out.flush()
        except BaseException:
            self.messages.pop()  # the turn did not happen; the user may ask again
            raise
        finally:
            out.write("\n")
            out.flush()
        reply = "".join(parts)
        self.messages.append({"role": "assistant", "content": reply})
        return reply


@client_command
def chat(
    model: Annotated[str, typer.Argument(help="model id (base or ft:...)")],
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    temperature: Annotated[float, typer.Option()] = 0.7,
    top_p: Annotated[float, typer.Option()] = 1.0,
    max_tokens: Annotated[int, typer.Option()] = 512,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> int:
    """Interactive streaming chat with a model (/exit quits, /reset starts over)."""
    session = ChatSession(connect(base_url, api_key), model, system=system, temperature=temperature, top_p=top_p,
                          max_tokens=max_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {model}. /exit quits, /reset starts over.")
    while True:
        try:
            text = input("you> " if interactive else "").strip()
        except EOFError:
            break
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            continue
        if interactive:
            sys.stdout.write(f"{model}> ")
        try:
            session.ask(text)
        except openai_errors() as e:
            print(f"error: {openai_message(e)}", file=sys.stderr)
            if not interactive:
                return 1
    return 0
