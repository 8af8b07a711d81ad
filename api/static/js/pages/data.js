// Data page: upload by drag and drop (XHR progress), the project's files, a file's validation report
// (errors and warnings with their lines, token-length histogram, duplicates, share over the max length)
// and a preview of converted examples rendered with the chat template, learned spans highlighted.
// Files over CHUNKED_FROM go through /v1/uploads in parts; large files are validated on a worker, so a
// file still "uploaded" shows its progress, refreshed until it is processed or in error.

import { ApiError, api, listAll, session, uploadFile } from "../api.js";
import { histogram } from "../charts.js";
import { clear, field, fmtBytes, fmtInt, fmtNum, fmtPercent, fmtTime, h, notice, table } from "../dom.js";

const CHUNKED_FROM = 64 * 1024 * 1024;
const PART_SIZE = 32 * 1024 * 1024;
const POLL_MS = 1500;

// one part of a /v1/uploads upload, with upload progress (XHR: fetch has none)
function sendPart(uploadId, blob, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/uploads/${uploadId}/parts`);
    xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body); else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, null));
    const form = new FormData();
    form.append("data", blob, "part");
    xhr.send(form);
  });
}

async function uploadChunked(file, onProgress) {
  const up = await api("/uploads", { method: "POST",
    body: { bytes: file.size, filename: file.name, mime_type: file.type || "application/octet-stream", purpose: "fine-tune" } });
  const ids = [];
  try {
    for (let start = 0; start < file.size; start += PART_SIZE) {
      const part = await sendPart(up.id, file.slice(start, start + PART_SIZE),
        (loaded) => onProgress((start + loaded) / file.size));
      ids.push(part.id);
    }
    onProgress(1, true);
    const done = await api(`/uploads/${up.id}/complete`, { method: "POST", body: { part_ids: ids } });
    return done.file;
  } catch (err) {
    api(`/uploads/${up.id}/cancel`, { method: "POST" }).catch(() => {}); // frees the stored parts
    throw err;
  }
}

function fileStatus(f) {
  if (f.status === "uploaded") return `validating ${fmtPercent(f.progress || 0)}`;
  return f.status === "error" ? "error" : "processed";
}

export async function render(root, [fileId]) {
  const charts = [];
  const timers = [];
  const detail = h("section", { class: "card", id: "file-detail", "aria-label": "Selected file" });
  const filesBox = h("div", {});
  root.append(
    h("h1", {}, "Data"),
    uploadCard((file) => { location.hash = `#/data/${file.id}`; }),
    h("div", { class: "columns" },
      h("section", { class: "card", "aria-labelledby": "files-title" }, h("h2", { id: "files-title" }, "Your files"), filesBox),
      detail));

  const files = await listAll("/files");
  clear(filesBox, table([
    { label: "File", cell: (f) => h("a", { href: `#/data/${f.id}`, "aria-current": f.id === fileId ? "true" : null }, f.filename) },
    { label: "Kind", cell: (f) => f.kind || "–" },
    { label: "Format", cell: (f) => f.format || "–" },
    { label: "Status", cell: (f) => h("span", { class: `status ${f.status}` }, fileStatus(f)) },
    { label: "Examples", cell: (f) => fmtInt(f.n_examples) },
    { label: "Uploaded", cell: (f) => fmtTime(f.created_at) },
  ], files, { empty: "No files yet: upload one above." }));

  if (!fileId) {
    detail.append(h("p", { class: "muted" }, "Choose a file to see its validation report and a preview."));
  } else {
    await showFile(detail, fileId, charts, timers);
  }
  return () => { charts.forEach((c) => c.destroy()); timers.forEach((t) => clearTimeout(t)); };
}

function uploadCard(onUploaded) {
  const input = h("input", { type: "file", id: "upload-input", class: "visually-hidden",
    accept: ".jsonl,.json,.gz,.csv,.tsv,.txt,.parquet,.zip,.tar" });
  const format = h("input", { type: "text", name: "format", placeholder: "detect", spellcheck: "false" });
  const maxLength = h("input", { type: "number", name: "max_length", value: "2048", min: "16", step: "1" });
  const bar = h("progress", { id: "upload-progress", max: "1", value: "0", "aria-label": "Upload progress", hidden: true });
  const status = h("div", { id: "upload-status", "aria-live": "polite" });
  const zone = h("label", { for: input.id, class: "dropzone", id: "dropzone" },
    h("strong", {}, "Drop a dataset here"), " or click to choose a file",
    h("small", { class: "hint" }, "JSONL, JSON array, CSV or TSV (or gzip of any), Parquet, a zipped datasets folder: OpenAI chat, Alpaca, ShareGPT, hh-rlhf, DPO pairs, prompts…"));

  async function send(file) {
    if (!file) return;
    bar.hidden = false;
    bar.value = 0;
    clear(status, h("span", {}, `Uploading ${file.name} (${fmtBytes(file.size)})…`));
    try {
      const progress = (share, sent) => {
        bar.value = share;
        if (sent) clear(status, h("span", {}, `Validating ${file.name}: detecting the format, converting, counting tokens…`));
      };
      const stored = file.size >= CHUNKED_FROM
        ? await uploadChunked(file, progress)
        : await uploadFile(file, { format: format.value.trim(), max_length: maxLength.value }, progress);
      clear(status, stored.status === "uploaded"
        ? notice("ok", `${stored.filename} is stored; it is being validated in the background.`)
        : notice("ok", `${stored.filename}: ${stored.n_examples} ${stored.kind} examples (${stored.format}).`));
      onUploaded(stored);
    } catch (err) {
      bar.hidden = true;
      // the 400 names each problem "line N: ..." joined by "; "
      const lines = err instanceof ApiError && err.status === 400
        ? err.message.split(/; (?=(?:line|record) \d|\.\.\. and )/) : [err.message];
      clear(status, h("div", { class: "notice error", role: "alert", id: "upload-error" },
        h("strong", {}, "The file was not accepted."), h("ul", {}, lines.map((l) => h("li", {}, l)))));
    }
  }

  input.addEventListener("change", () => send(input.files[0]));
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (e) => send(e.dataTransfer.files[0]));

  return h("section", { class: "card", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a dataset"),
    zone, input,
    h("div", { class: "row" },
      field("Format (optional)", format, "Leave empty to detect it from the content."),
      field("Max length (tokens)", maxLength, "Used for the share of examples that would be cut.")),
    bar, status);
}

async function showFile(box, fileId, charts, timers) {
  const file = await api(`/files/${fileId}`);
  if (file.status === "uploaded" || file.status === "error") {
    pending(box, file, charts, timers);
    return;
  }
  const r = file.report || {};
  const ts = r.token_stats;
  box.append(
    h("h2", {}, file.filename),
    h("p", { class: "muted" }, `${file.id} · ${fmtBytes(file.bytes)} · uploaded ${fmtTime(file.created_at)}`),
    h("div", { class: "report", id: "report" },
      h("p", {}, h("strong", {}, `${fmtInt(file.n_examples)} ${file.kind} examples`),
        ` in ${file.format} format`, r.container ? ` (${r.container}${r.compressed ? ", gzip" : ""})` : "",
        ` from ${fmtInt(r.n_records)} records`, r.n_skipped ? `, ${fmtInt(r.n_skipped)} skipped` : ""),
      h("dl", { class: "stats" },
        stat("Errors", fmtInt(r.n_errors)),
        stat("Warnings", fmtInt(r.n_warnings)),
        stat("Duplicates", fmtInt(r.duplicates)),
        ts ? [
          stat("Tokens (total)", fmtInt(ts.total)),
          stat("Mean / median", `${fmtNum(ts.mean, 3)} / ${fmtInt(ts.p50)}`),
          stat("p95 / max", `${fmtInt(ts.p95)} / ${fmtInt(ts.max)}`),
          stat(`Over ${fmtInt(ts.max_length)} tokens`, `${fmtPercent(ts.over_max_length_share)} (${fmtInt(ts.over_max_length)})`),
        ] : null),
      h("div", { id: "histogram" }),
      problems("Errors", r.errors, r.n_errors, "error"),
      problems("Warnings", r.warnings, r.n_warnings, "warning")),
    h("div", { class: "row" },
      h("a", { class: "button", href: `#/train?file=${file.id}` }, "Train on this file"),
      h("button", { type: "button", class: "danger", onclick: () => remove(file) }, "Delete file")),
    h("h3", {}, "Preview"),
    h("p", { class: "muted" }, "The first examples as the base model sees them. ",
      h("mark", { class: "learned" }, "Highlighted"), " text is learned (the loss trains on it); the rest is context."),
  );
  if (ts && ts.histogram) {
    charts.push(histogram(box.querySelector("#histogram"), {
      title: "Token length per example", edges: ts.histogram.edges, counts: ts.histogram.counts,
    }));
  }
  const previewBox = h("div", { id: "preview", "aria-live": "polite" }, h("p", { class: "muted" }, "Rendering…"));
  box.append(previewBox);
  try {
    const p = await api(`/files/${file.id}/preview?n=5`);
    clear(previewBox, p.data.map((ex, i) => example(ex, i + 1, p.kind)));
  } catch (err) {
    clear(previewBox, notice("error", err.message));
  }
}

// a file validated on a worker: its progress until it settles, then the full report (or the error)
function pending(box, file, charts, timers) {
  const bar = h("progress", { id: "file-progress", max: "1", value: String(file.progress || 0), "aria-label": "Validation progress" });
  const r = file.report || {};
  clear(box,
    h("h2", {}, file.filename),
    h("p", { class: "muted" }, `${file.id} · ${fmtBytes(file.bytes)} · uploaded ${fmtTime(file.created_at)}`),
    file.status === "uploaded"
      ? h("div", { id: "file-status", "aria-live": "polite" },
        h("p", {}, `Validating on a worker: ${fmtPercent(file.progress || 0)} read.`), bar)
      : h("div", { class: "notice error", role: "alert", id: "file-status" },
        h("strong", {}, "The file was not accepted. "), file.status_details || ""),
    file.status === "error" ? problems("Errors", r.errors, r.n_errors, "error") : null,
    h("div", { class: "row" },
      h("button", { type: "button", class: "danger", onclick: () => remove(file) }, "Delete file")));
  if (file.status !== "uploaded") return;
  timers.push(setTimeout(async () => {
    if (!box.isConnected) return;
    try {
      const now = await api(`/files/${file.id}`);
      if (now.status === "processed") {
        clear(box);
        await showFile(box, file.id, charts, timers);
      } else {
        pending(box, now, charts, timers);
      }
    } catch (err) {
      clear(box, notice("error", err.message));
    }
  }, POLL_MS));
}

function stat(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}

function problems(title, list, total, kind) {
  if (!list || !list.length) return null;
  const more = total > list.length ? h("li", { class: "muted" }, `… and ${fmtInt(total - list.length)} more`) : null;
  return h("div", { class: `problems ${kind}` }, h("h3", {}, `${title} (${fmtInt(total)})`),
    h("ul", {}, list.map((p) => h("li", {}, p.text, p.field ? h("code", {}, ` ${p.field}`) : null)), more));
}

function segments(segs) {
  return h("pre", { class: "rendered" }, segs.map((s) => (s.learned ? h("mark", { class: "learned" }, s.text) : s.text)));
}

function example(ex, n, kind) {
  if (kind === "preference") {
    return h("article", { class: "example preference" }, h("h4", {}, `Example ${n}`),
      h("div", { class: "triple" },
        h("section", {}, h("h5", {}, "Prompt"), segments(ex.prompt)),
        h("section", { class: "chosen" }, h("h5", {}, `Chosen (${fmtInt(ex.chosen_tokens)} tokens)`), segments(ex.chosen)),
        h("section", { class: "rejected" }, h("h5", {}, `Rejected (${fmtInt(ex.rejected_tokens)} tokens)`), segments(ex.rejected))));
  }
  const meta = [`${fmtInt(ex.n_tokens)} tokens`];
  if (ex.n_learned != null) meta.push(`${fmtInt(ex.n_learned)} learned`);
  if (ex.truncated) meta.push("cut at the max length");
  return h("article", { class: "example" }, h("h4", {}, `Example ${n}`, h("small", { class: "muted" }, ` · ${meta.join(" · ")}`)),
    segments(ex.segments));
}

async function remove(file) {
  if (!confirm(`Delete ${file.filename}? Jobs that used it keep their results.`)) return;
  try {
    await api(`/files/${file.id}`, { method: "DELETE" });
    location.hash = "#/data";
  } catch (err) {
    alert(err.message);
  }
}
