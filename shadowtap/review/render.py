"""A pair as the reviewer sees it: the request, and the two answers as A and B, blind.

Nothing rendered here says which side is which: no model names, response ids, latencies or side names;
a failed side shows only the kind of failure. Every string from a record is HTML-escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from shadowtap.records import Output, PairRecord, SideRecord, pair_api, side_outputs

__all__ = ["render_answer", "render_request"]


def _pre(text: str, cls: str = "text") -> str:
    return f'<pre class="{cls}">{escape(text)}</pre>'


def _content(content: Any) -> str:
    """A message's content: a string, or its parts (text shown, other parts named)."""
    if isinstance(content, str):
        return _pre(content)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(_pre(part["text"]))
            elif isinstance(part, dict):
                parts.append(f'<p class="muted">[{escape(str(part.get("type", "part")))}]</p>')
        return "".join(parts)
    return "" if content is None else _pre(json.dumps(content, ensure_ascii=False, indent=2), "json")


def _message(message: Any) -> str:
    if not isinstance(message, dict):
        return _pre(json.dumps(message, ensure_ascii=False), "json")
    role = escape(str(message.get("role", "user")))
    body = _content(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        body += _tool_call(str(function.get("name")), str(function.get("arguments", "")))
    return f'<div class="message role-{role}"><div class="role">{role}</div>{body}</div>'


def _tool(tool: Any) -> str:
    function = tool.get("function", tool) if isinstance(tool, dict) else {}
    name = escape(str(function.get("name", tool.get("type", "tool") if isinstance(tool, dict) else "tool")))
    description = escape(str(function.get("description") or ""))
    schema = json.dumps(function.get("parameters", {}), ensure_ascii=False, indent=2)
    return (
        f"<li><code>{name}</code> {description}"
        f"<details><summary>parameters</summary>{_pre(schema, 'json')}</details></li>"
    )


def _required_format(request: dict[str, Any]) -> str:
    fmt = request.get("response_format") or (request.get("text") or {}).get("format")
    if not fmt:
        return ""
    shown = json.dumps(fmt, ensure_ascii=False, indent=2)
    return f'<section class="format"><h3>Required format</h3>{_pre(shown, "json")}</section>'


def _conversation(pair: PairRecord) -> str:
    request = pair["request"]
    api = pair_api(pair)
    if api == "completions":
        prompt = request.get("prompt")
        return _message(
            {"role": "prompt", "content": prompt if isinstance(prompt, str) else json.dumps(prompt)}
        )
    if api == "responses":
        parts = []
        if request.get("instructions"):
            parts.append(_message({"role": "system", "content": request["instructions"]}))
        given = request.get("input")
        items = [{"role": "user", "content": given}] if isinstance(given, str) else given or []
        parts.extend(_message(item) for item in items)
        return "".join(parts)
    return "".join(_message(m) for m in request.get("messages") or [])


def render_request(pair: PairRecord) -> str:
    """The request: system message and conversation, the tools offered, the format required."""
    request = pair["request"]
    tools = request.get("tools") or []
    offered = (
        f'<section class="tools"><h3>Tools offered</h3><ul>{"".join(_tool(t) for t in tools)}</ul></section>'
        if tools
        else ""
    )
    return f'<section class="conversation"><h3>Conversation</h3>{_conversation(pair)}</section>{offered}{_required_format(request)}'


def _tool_call(name: str, arguments: str) -> str:
    try:
        shown = json.dumps(json.loads(arguments), ensure_ascii=False, indent=2)
    except ValueError:
        shown = arguments  # as the model sent it: not JSON
    return f'<div class="tool-call"><div class="tool-name">calls <code>{escape(name)}</code></div>{_pre(shown, "json")}</div>'


def _output(output: Output, several: bool) -> str:
    parts = [f'<h4 class="choice">choice {output["index"]}</h4>'] if several else []
    if output.get("reasoning"):
        parts.append(
            f'<details class="reasoning"><summary>reasoning</summary>{_pre(output["reasoning"] or "")}</details>'
        )
    if output.get("refusal"):
        parts.append(
            f'<div class="refusal"><span class="tag">refusal field</span>{_pre(output["refusal"] or "")}</div>'
        )
    if output.get("text"):
        parts.append(_pre(output["text"] or ""))
    for call in output.get("tool_calls") or []:
        parts.append(_tool_call(str(call.get("name")), call.get("arguments") or ""))
    if not (output.get("text") or output.get("tool_calls") or output.get("refusal")):
        parts.append('<p class="muted">(empty answer)</p>')
    finish = output.get("finish_reason")
    if finish and finish not in ("stop", "completed"):
        parts.append(f'<p class="muted">finished: {escape(str(finish))}</p>')
    return f'<div class="output">{"".join(parts)}</div>'


def render_answer(side: SideRecord) -> str:
    """One side's answer, every choice of it; a failed call as the kind of failure only."""
    outputs = side_outputs(side)
    error = side.get("error")
    if not outputs:
        kind = escape(str(error.get("kind"))) if error else "no answer"
        return f'<p class="failed">No answer ({kind}).</p>'
    note = '<p class="muted">(the answer was cut at the recording limit)</p>' if side.get("truncated") else ""
    return "".join(_output(o, len(outputs) > 1) for o in outputs) + note
