// Playground: streaming chat with any model, adapter or checkpoint (POST /v1/chat/completions with
// stream=true, read with fetch + ReadableStream), generation settings, and a side-by-side mode that sends
// one prompt to two models at once, each pane keeping its own conversation. Optional boxes send function
// tools (the reply shows each tool call with its parsed arguments) and a JSON schema (response_format).

import { api, openStream, readEvents } from "../api.js";
import { clear, field, fmtNum, h, notice } from "../dom.js";

class Pane {
  constructor(id, models, selected) {
    this.messages = [];
    this.select = h("select", { id: `${id}-model` }, models.map((m) => h("option", { value: m.id, selected: m.id === selected },
      m.kind === "base" ? m.id : `${m.id} (${m.kind.replace("_", " ")})`)));
    this.log = h("div", { class: "chat-log", role: "log", "aria-live": "polite", "aria-label": `Conversation ${id.slice(-1).toUpperCase()}` });
    this.el = h("section", { class: "pane card", id }, field(`Model ${id.slice(-1).toUpperCase()}`, this.select), this.log);
    this.select.addEventListener("change", () => this.reset());
  }

  reset() {
    this.messages = [];
    clear(this.log);
  }

  bubble(role, text) {
    const el = h("div", { class: `msg ${role}` }, h("span", { class: "who" }, role === "user" ? "You" : this.select.value), h("div", { class: "text" }, text));
    this.log.append(el);
    this.log.scrollTop = this.log.scrollHeight;
    return el;
  }

  showToolCalls(out, calls) {
    const box = h("div", { class: "tool-calls" }, calls.map((c) => {
      let args = c.function.arguments, valid = true;
      try { args = JSON.stringify(JSON.parse(args), null, 2); } catch { valid = false; }
      return h("div", { class: "tool-call", "data-name": c.function.name, "data-valid-json": String(valid) },
        h("span", { class: "who" }, `calls ${c.function.name}`), h("pre", { class: "rendered" }, args));
    }));
    out.insertBefore(box, out.querySelector(".stats"));
  }

  async send(prompt, system, settings, signal) {
    this.messages.push({ role: "user", content: prompt });
    this.bubble("user", prompt);
    const out = this.bubble("assistant", "");
    const textEl = out.querySelector(".text");
    out.dataset.state = "streaming";
    out.dataset.chunks = "0";
    const started = performance.now();
    let first = null, reply = "", usage = null, chunks = 0;
    const calls = [];
    try {
      const messages = system ? [{ role: "system", content: system }, ...this.messages] : this.messages;
      const response = await openStream("/chat/completions", { method: "POST", signal,
        body: { model: this.select.value, messages, stream: true, stream_options: { include_usage: true }, ...settings } });
      for await (const ev of readEvents(response)) {
        if (ev.data === "[DONE]") break;
        const chunk = JSON.parse(ev.data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        for (const tc of (delta && delta.tool_calls) || []) {
          if (!calls[tc.index]) calls[tc.index] = { id: tc.id, type: "function", function: { name: "", arguments: "" } };
          const fn = tc.function || {};
          if (fn.name) calls[tc.index].function.name += fn.name;
          if (fn.arguments) calls[tc.index].function.arguments += fn.arguments;
          if (first === null) first = performance.now();
          chunks += 1;
        }
        if (delta && delta.content) {
          if (first === null) first = performance.now();
          reply += delta.content;
          chunks += 1;
          textEl.textContent = reply;
          out.dataset.chunks = String(chunks);
          this.log.scrollTop = this.log.scrollHeight;
        }
      }
      out.dataset.state = "done";
    } catch (err) {
      out.dataset.state = err.name === "AbortError" ? "stopped" : "error";
      if (err.name !== "AbortError") out.append(notice("error", err.message));
    }
    const toolCalls = calls.filter(Boolean);
    if (toolCalls.length) this.messages.push({ role: "assistant", content: reply || null, tool_calls: toolCalls });
    else if (reply) this.messages.push({ role: "assistant", content: reply });
    else this.messages.pop(); // nothing came back: let the user ask again
    if (reply && settings.response_format) {
      let valid = true;
      try { JSON.parse(reply); } catch { valid = false; }
      out.dataset.validJson = String(valid);
    }
    const secs = (performance.now() - started) / 1000;
    const n = usage ? usage.completion_tokens : chunks;
    const rate = first !== null && secs > 0 ? n / ((performance.now() - first) / 1000 || secs) : null;
    out.append(h("small", { class: "muted stats" }, `${n} tokens · ${fmtNum(secs, 3)} s`
      + (first !== null ? ` · first token after ${fmtNum((first - started) / 1000, 3)} s` : "")
      + (rate ? ` · ${fmtNum(rate, 3)} tokens/s` : "")));
    if (toolCalls.length) this.showToolCalls(out, toolCalls);
  }
}

export async function render(root, [query]) {
  const params = new URLSearchParams(query || "");
  const models = (await api("/models")).data.filter((m) => m.kind !== "reward_model");
  if (!models.length) {
    root.append(h("h1", {}, "Playground"), notice("error", "No chat models are installed."));
    return;
  }
  const wanted = params.get("model");
  const a = new Pane("pane-a", models, wanted || models[0].id);
  const other = models.find((m) => m.id !== a.select.value);
  const b = new Pane("pane-b", models, params.get("compare") || (other ? other.id : models[0].id));
  const compare = h("input", { type: "checkbox", id: "compare", checked: params.has("compare") });
  const temperature = h("input", { type: "number", id: "temperature", min: "0", max: "2", step: "0.1", value: "0.7" });
  const topP = h("input", { type: "number", id: "top-p", min: "0.01", max: "1", step: "0.05", value: "1" });
  const maxTokens = h("input", { type: "number", id: "max-tokens", min: "1", max: "4096", step: "1", value: "256" });
  const system = h("textarea", { id: "system", rows: "2", placeholder: "You are a helpful assistant." });
  const tools = h("textarea", { id: "tools", rows: "4", spellcheck: "false",
    placeholder: '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]' });
  const toolChoice = h("select", { id: "tool-choice" }, ["auto", "required", "none"].map((c) => h("option", { value: c }, c)));
  const schema = h("textarea", { id: "json-schema", rows: "4", spellcheck: "false",
    placeholder: '{"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}' });
  const prompt = h("textarea", { id: "prompt", rows: "3", required: true, placeholder: "Ask something… (Enter sends, Shift+Enter for a new line)" });
  const send = h("button", { type: "submit", id: "send" }, "Send");
  const stop = h("button", { type: "button", id: "stop", disabled: true }, "Stop");
  const reset = h("button", { type: "button", id: "clear", class: "link" }, "Clear conversation");
  const panes = h("div", { class: "panes" }, a.el, b.el);
  const status = h("div", { "aria-live": "polite" });

  const form = h("form", { class: "card composer", id: "composer" },
    field("Message", prompt), h("div", { class: "row" }, send, stop, reset), status);
  root.append(h("h1", {}, "Playground"),
    h("section", { class: "card settings-row", "aria-label": "Generation settings" },
      h("div", { class: "field checkbox" }, compare, h("label", { for: "compare" }, "Side by side: send each prompt to two models")),
      h("div", { class: "grid" }, field("Temperature", temperature, "0 = greedy"), field("Top p", topP),
        field("Max tokens", maxTokens), field("System prompt (optional)", system)),
      h("details", { class: "advanced", id: "structured" }, h("summary", {}, "Tools and structured output"),
        h("div", { class: "grid" },
          field("Tools (JSON list of function tools)", tools, "The reply shows each tool call and its arguments."),
          field("Tool choice", toolChoice, "required: the reply is a call whose arguments match the tool's schema."),
          field("JSON schema of the reply (response_format)", schema, "The reply is JSON valid against it.")))),
    panes, form);

  const syncCompare = () => { b.el.hidden = !compare.checked; panes.classList.toggle("two", compare.checked); };
  compare.addEventListener("change", syncCompare);
  syncCompare();
  reset.addEventListener("click", () => { a.reset(); b.reset(); });

  let abort = null;
  stop.addEventListener("click", () => abort && abort.abort());
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    clear(status);
    const settings = { temperature: Number(temperature.value), top_p: Number(topP.value), max_tokens: parseInt(maxTokens.value, 10) };
    if (!text) { status.append(notice("error", "Type a message first.")); return; }
    try {
      if (tools.value.trim()) {
        const list = JSON.parse(tools.value);
        if (!Array.isArray(list)) throw new Error("Tools must be a JSON list of function tools.");
        settings.tools = list;
        settings.tool_choice = toolChoice.value;
      }
      if (schema.value.trim()) {
        const parsed = JSON.parse(schema.value);
        if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("The JSON schema must be an object.");
        settings.response_format = { type: "json_schema", json_schema: { name: "reply", schema: parsed, strict: true } };
      }
    } catch (err) {
      status.append(notice("error", err instanceof SyntaxError ? `Invalid JSON: ${err.message}` : err.message));
      return;
    }
    if (!(settings.temperature >= 0 && settings.temperature <= 2) || !(settings.top_p > 0 && settings.top_p <= 1)
      || !(settings.max_tokens >= 1)) {
      status.append(notice("error", "Temperature must be 0–2, top p in (0, 1] and max tokens at least 1."));
      return;
    }
    prompt.value = "";
    abort = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const active = compare.checked ? [a, b] : [a];
    await Promise.all(active.map((p) => p.send(text, system.value.trim(), settings, abort.signal)));
    send.disabled = false;
    stop.disabled = true;
    prompt.focus();
  });
  return () => abort && abort.abort();
}
