"""Local stand-ins for the three model APIs the vendor CLIs call, each serving known token usage.

* Anthropic Messages API (`POST /v1/messages`, JSON or streaming SSE), as Claude Code calls it;
* Gemini API (`:generateContent`, `:streamGenerateContent?alt=sse`, `:countTokens`), as Gemini CLI
  calls it with `GOOGLE_GEMINI_BASE_URL`;
* OpenAI Responses API (`POST /v1/responses`, streaming SSE), as Codex calls it with a custom
  `model_providers` entry.

Every model answer carries the usage in `USAGE` (a fixed, distinct number per field), and the
server tallies what it served (`served`), so a test compares Chorus's per-person totals with
what the tool was really given. With `edit` set, the first answer of each conversation asks the
tool to write a file (a tool call), so the tool's edit and line counters move; the answer to the
tool's result is plain text.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: Per model answer: what the stand-in reports as used. Distinct values make a wrong sum visible.
USAGE = {"input": 1201, "output": 307, "cache_read": 5003, "cache_write": 1709, "reasoning": 41}

EDIT_FILE = "chorus_edit_probe.txt"
EDIT_TEXT = "one\ntwo\nthree"


class ModelApis:
    """One HTTP server answering all three APIs on 127.0.0.1 (port 0)."""

    def __init__(self, edit: bool = False, workdir: Path | None = None) -> None:
        self.edit = edit
        self.workdir = workdir
        self.served: Counter[str] = Counter()  # answers, by API
        self.paths: list[str] = []
        self.tools_seen: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        apis = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # model lists
                apis._note(self.path)
                if "/models" in self.path:
                    self._json({"object": "list", "data": [], "models": []})
                else:
                    self._json({})

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                apis._note(self.path)
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = {}
                path = self.path.split("?")[0]
                if path.endswith("/v1/messages/count_tokens"):
                    self._json({"input_tokens": 10})
                elif path.endswith("/v1/messages"):
                    apis._anthropic(self, request)
                elif ":countTokens" in path:
                    self._json({"totalTokens": 10})
                elif ":generateContent" in path or ":streamGenerateContent" in path:
                    apis._gemini(self, request, stream=":streamGenerateContent" in path)
                elif path.endswith("/responses"):
                    apis._openai(self, request)
                else:
                    self._json({})

            def _json(self, data: Any, status: int = 200) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def sse(self, events: list[tuple[str | None, Any]]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                for name, data in events:
                    chunk = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
                    self.wfile.write(chunk.encode())
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ModelApis:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _note(self, path: str) -> None:
        with self._lock:
            self.paths.append(path)

    def _count(self, api: str) -> None:
        with self._lock:
            self.served[api] += 1

    # -- Anthropic ---------------------------------------------------------------------------
    def _anthropic(self, handler: Any, request: dict[str, Any]) -> None:
        self._count("anthropic")
        messages = request.get("messages", [])
        has_result = any(isinstance(m.get("content"), list) and any(
            isinstance(c, dict) and c.get("type") == "tool_result" for c in m["content"]) for m in messages)
        tools = {t.get("name") for t in request.get("tools", []) if isinstance(t, dict)}
        model = request.get("model", "claude-standin")
        usage = {"input_tokens": USAGE["input"], "output_tokens": USAGE["output"],
                 "cache_read_input_tokens": USAGE["cache_read"], "cache_creation_input_tokens": USAGE["cache_write"]}
        if self.edit and not has_result and "Write" in tools:
            content: list[dict[str, Any]] = [{"type": "tool_use", "id": "toolu_standin_1", "name": "Write",
                                              "input": {"file_path": str((self.workdir or Path.cwd()) / EDIT_FILE),
                                                        "content": EDIT_TEXT}}]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": "Done."}]
            stop = "end_turn"
        message = {"id": "msg_standin", "type": "message", "role": "assistant", "model": model,
                   "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not request.get("stream"):
            handler._json(message)
            return
        start = dict(message, content=[], stop_reason=None,
                     usage=dict(usage, output_tokens=1))
        events: list[tuple[str | None, Any]] = [("message_start", {"type": "message_start", "message": start})]
        for i, block in enumerate(content):
            if block["type"] == "text":
                events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                    "content_block": {"type": "text", "text": ""}}),
                           ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                    "delta": {"type": "text_delta", "text": block["text"]}})]
            else:
                events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                    "content_block": dict(block, input={})}),
                           ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                    "delta": {"type": "input_json_delta",
                                                              "partial_json": json.dumps(block["input"])}})]
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": USAGE["output"]}}),
                   ("message_stop", {"type": "message_stop"})]
        handler.sse(events)

    # -- Gemini ------------------------------------------------------------------------------
    def _gemini(self, handler: Any, request: dict[str, Any], stream: bool) -> None:
        self._count("gemini")
        contents = request.get("contents", [])
        has_result = any("functionResponse" in part for c in contents for part in c.get("parts", [])
                         if isinstance(part, dict))
        declared = {f.get("name") for t in request.get("tools", []) if isinstance(t, dict)
                    for f in t.get("functionDeclarations", []) if isinstance(f, dict)}
        if self.edit and not has_result and "write_file" in declared:
            parts: list[dict[str, Any]] = [{"functionCall": {"name": "write_file", "args": {
                "file_path": str((self.workdir or Path.cwd()) / EDIT_FILE), "content": EDIT_TEXT}}}]
        else:
            parts = [{"text": "Done."}]
        answer = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                  "usageMetadata": {"promptTokenCount": USAGE["input"] + USAGE["cache_read"],
                                    "cachedContentTokenCount": USAGE["cache_read"],
                                    "candidatesTokenCount": USAGE["output"],
                                    "thoughtsTokenCount": USAGE["reasoning"],
                                    "totalTokenCount": USAGE["input"] + USAGE["cache_read"] + USAGE["output"]
                                    + USAGE["reasoning"]},
                  "modelVersion": "gemini-standin"}
        if stream:
            handler.sse([(None, answer)])
        else:
            handler._json(answer)

    # -- OpenAI Responses --------------------------------------------------------------------
    def _openai(self, handler: Any, request: dict[str, Any]) -> None:
        self._count("openai")
        items = request.get("input", [])
        has_result = any(isinstance(i, dict) and i.get("type") in ("function_call_output", "custom_tool_call_output")
                         for i in items)
        tools = {t.get("name") for t in request.get("tools", []) if isinstance(t, dict)}
        self.tools_seen["openai"] = sorted(str(t) for t in tools)
        patch = (f"*** Begin Patch\n*** Add File: {EDIT_FILE}\n"
                 + "".join(f"+{line}\n" for line in EDIT_TEXT.splitlines()) + "*** End Patch\n")
        item: dict[str, Any]
        if self.edit and not has_result and "apply_patch" in tools:
            item = {"type": "custom_tool_call", "id": "ctc_standin", "call_id": "call_standin",
                    "name": "apply_patch", "input": patch, "status": "completed"}
        elif self.edit and not has_result and "exec_command" in tools:
            # Codex offers no apply_patch tool to a model it does not know; it intercepts an
            # `apply_patch` heredoc run through its shell tool and applies it as a patch.
            item = {"type": "function_call", "id": "fc_standin", "call_id": "call_standin", "name": "exec_command",
                    "arguments": json.dumps({"cmd": f"apply_patch <<'EOF'\n{patch}EOF\n"}), "status": "completed"}
        else:
            item = {"type": "message", "id": "msg_standin", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "Done.", "annotations": []}]}
        usage = {"input_tokens": USAGE["input"] + USAGE["cache_read"],
                 "input_tokens_details": {"cached_tokens": USAGE["cache_read"]},
                 "output_tokens": USAGE["output"] + USAGE["reasoning"],
                 "output_tokens_details": {"reasoning_tokens": USAGE["reasoning"]},
                 "total_tokens": USAGE["input"] + USAGE["cache_read"] + USAGE["output"] + USAGE["reasoning"]}
        response = {"id": "resp_standin", "object": "response", "status": "completed", "model": request.get("model"),
                    "output": [item], "usage": usage}
        handler.sse([
            ("response.created", {"type": "response.created", "response": dict(response, status="in_progress",
                                                                                  output=[], usage=None)}),
            ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item}),
            ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
            ("response.completed", {"type": "response.completed", "response": response}),
        ])
