// The console's only road to the server: the public /v1 API with the key the user signed in with (kept
// in sessionStorage, so it dies with the tab), plus the two data-free /console helpers of the Train form.
// Owns request/error handling, the XHR upload with progress and the server-sent-events reader; it does
// not render anything.

const KEY = "chatforge.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  signIn(key) { sessionStorage.setItem(KEY, key); },
  signOut() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || (status ? `HTTP ${status}` : "The server could not be reached."));
    this.status = status;
    this.param = err.param || null;
    this.code = err.code || null;
  }
}

function authHeaders(key = session.key) {
  return { Authorization: `Bearer ${key}` };
}

async function parse(response) {
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: { message: text } }; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** JSON request to /v1{path}. `key` overrides the signed-in key (used to check a key before keeping it). */
export async function api(path, { method = "GET", body, signal, key } = {}) {
  const init = { method, signal, headers: authHeaders(key || session.key) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try { response = await fetch(`/v1${path}`, init); } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, null);
  }
  return parse(response);
}

/** All pages of an OpenAI-style list ({data, has_more}, `after` cursor), up to `max` items. */
export async function listAll(path, max = 500) {
  const out = [];
  let after = null;
  while (out.length < max) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return out;
}

/** The console's own data-free helpers (method settings schema and dry-run check). */
export async function consoleApi(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  return parse(await fetch(`/console${path}`, init));
}

/** POST /v1/files with a progress callback (fetch cannot report upload progress; XHR can). */
export function uploadFile(file, fields, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", authHeaders().Authorization);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1, true);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = { error: { message: xhr.responseText } }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body); else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, null));
    const form = new FormData();
    form.append("purpose", "fine-tune");
    for (const [k, v] of Object.entries(fields)) if (v !== "" && v != null) form.append(k, v);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Open a streaming request; resolves to the Response once headers arrive (errors become ApiError). */
export async function openStream(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: { ...authHeaders(), Accept: "text/event-stream" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try { response = await fetch(`/v1${path}`, init); } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, null);
  }
  if (!response.ok) await parse(response);
  return response;
}

/**
 * Server-sent events of a fetch Response, as {event, data, id} (EventSource cannot send an
 * Authorization header, so the stream is read by hand). Follows the WHATWG parsing rules: lines end in
 * CR, LF or CRLF; ":" starts a comment (sse-starlette's pings); a blank line dispatches.
 */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "", data = [], id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buffer);
        // a CR at the very end may be the first half of CRLF: wait for the next chunk
        if (!m || (m[0] === "\r" && m.index === buffer.length - 1)) break;
        const line = buffer.slice(0, m.index);
        buffer = buffer.slice(m.index + m[0].length);
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n"), id };
          event = ""; data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
    }
  } finally {
    reader.releaseLock();
  }
}
