// Evals: OpenAI's Evals API in the console. The list (#/evals) shows each eval with its runs, their pass
// rate per testing criterion and, for pairwise reward-model criteria, the win rate with its 95% interval;
// it creates an eval and a run from an uploaded JSONL file, and runs an existing eval again with another
// model (#/evals?model=ID preselects one: the job page's "Evaluate this model"). A run's page
// (#/evals/{eval}/runs/{run}, the run's report_url) follows its progress while it runs and shows its items
// side by side: prompt, reference, output and the grade of each criterion, filterable to failures.

import { api, ApiError, listAll, session } from "../api.js";
import { badge, clear, field, fmtInt, fmtNum, fmtPercent, fmtTime, h, notice, table } from "../dom.js";

const ACTIVE = ["queued", "in_progress"];
const REFRESH_MS = 1500;
const MAX_ITEMS = 2000;
const OPERATIONS = [["ilike", "contains (any case)"], ["like", "contains"], ["eq", "equals"]];

export async function render(root, [evalId, runId, query]) {
  if (evalId && runId) return renderRun(root, evalId, runId);
  if (evalId) { location.replace(`#/evals?eval=${encodeURIComponent(evalId)}`); return null; }
  return renderList(root, new URLSearchParams(query || ""));
}

// ---- shared pieces ----------------------------------------------------------------------------------

const runHref = (run) => `#/evals/${run.eval_id}/runs/${run.id}`;
const share = (passed, failed) => (passed + failed ? passed / (passed + failed) : null);

function runBadge(status) {
  return badge(status);
}

function passRate(run) {
  const c = run.result_counts;
  return h("span", { class: "pass-rate" }, fmtPercent(share(c.passed, c.failed + c.errored)),
    h("span", { class: "muted" }, ` (${fmtInt(c.passed)}/${fmtInt(c.passed + c.failed + c.errored)})`));
}

function meter(value, label) {
  return h("meter", { min: "0", max: "1", value: value ?? 0, "aria-label": label });
}

function winRate(pw) {
  if (pw.win_rate == null) return h("span", { class: "muted" }, "no compared items yet");
  return h("span", { class: "win-rate" }, h("strong", {}, fmtPercent(pw.win_rate)),
    ` (95% CI ${fmtPercent(pw.ci_low)}–${fmtPercent(pw.ci_high)}; ${pw.wins} wins, ${pw.ties} ties, ${pw.losses} losses)`);
}

function criteriaCell(run) {
  const rows = run.per_testing_criteria_results || [];
  if (!rows.length) return h("span", { class: "muted" }, "–");
  return h("ul", { class: "criteria-rates" }, rows.map((r) => h("li", {},
    h("span", { class: "crit" }, r.testing_criteria), " ", fmtPercent(share(r.passed, r.failed)))));
}

function progressCell(run) {
  const p = run.progress || { completed: 0, total: run.result_counts.total };
  return h("span", { class: "progress-cell" },
    h("progress", { max: p.total || 1, value: p.completed, "aria-label": `${run.id} progress` }),
    ` ${fmtInt(p.completed)}/${fmtInt(p.total)}`);
}

function describeCriterion(c) {
  if (c.type === "string_check") return `${c.input} ${c.operation} ${c.reference}`;
  if (c.type === "text_similarity") return `${c.evaluation_metric}(${c.input}, ${c.reference}) ≥ ${c.pass_threshold}`;
  if (c.type === "reward_model") {
    return c.mode === "pairwise" ? `pairwise, judged by ${c.model}` : `reward by ${c.model} ≥ ${c.pass_threshold ?? 0}`;
  }
  return c.type;
}

async function chatModels() {
  return (await api("/models")).data.filter((m) => m.kind !== "reward_model");
}

function modelSelect(id, models, selected) {
  return h("select", { id }, models.map((m) => h("option", { value: m.id, selected: m.id === selected },
    m.kind === "base" ? m.id : `${m.id} (${m.kind.replace("_", " ")})`)));
}

/** POST /v1/files with purpose "evals" (items are checked by the server on upload). */
async function uploadItems(file) {
  const form = new FormData();
  form.append("purpose", "evals");
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch("/v1/files", { method: "POST", body: form,
      headers: { Authorization: `Bearer ${session.key}` } });
  } catch { throw new ApiError(0, null); }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

const JSON_TYPE = (v) => (v === null ? "null" : Array.isArray(v) ? "array"
  : typeof v === "number" ? (Number.isInteger(v) ? "integer" : "number") : typeof v);

/** The first item of a JSONL items file (rows are {"item": {...}} or the bare item). */
export function firstItem(text) {
  const line = text.split(/\r?\n/).find((l) => l.trim());
  if (!line) throw new Error("The file is empty.");
  let obj;
  try { obj = JSON.parse(line); } catch { throw new Error("The first line is not valid JSON."); }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw new Error("The first line is not a JSON object.");
  const keys = Object.keys(obj);
  const item = keys.includes("item") && keys.every((k) => k === "item" || k === "sample") ? obj.item : obj;
  if (item === null || typeof item !== "object" || Array.isArray(item)) throw new Error("The item is not a JSON object.");
  if (!Object.keys(item).length) throw new Error("The first item has no fields.");
  return item;
}

export function itemSchema(item) {
  const properties = {};
  for (const [k, v] of Object.entries(item)) properties[k] = { type: JSON_TYPE(v) };
  return { type: "object", properties, required: Object.keys(item) };
}

// ---- the list: evals, their runs, new eval from a file --------------------------------------------

async function renderList(root, params) {
  const wanted = params.get("model");
  const focus = params.get("eval");
  const models = await chatModels();
  const listBox = h("div", { id: "evals-list" }, h("p", { class: "muted" }, "Loading…"));
  root.append(h("h1", {}, "Evals"));
  if (wanted) {
    root.append(h("p", { class: "notice ok", id: "evaluating" }, "Evaluating ", h("code", {}, wanted),
      ": run one of the evals below with it, or create an eval from a file."));
  }
  root.append(h("section", { class: "card", "aria-labelledby": "evals-title" },
    h("h2", { id: "evals-title" }, "Evals and their runs"), listBox), newEvalForm(models, wanted));

  let timer = null, stopped = false;
  async function load() {
    const evals = (await api("/evals?limit=100&order=desc")).data;
    const runs = await Promise.all(evals.map((e) => api(`/evals/${e.id}/runs?limit=100&order=desc`).then((r) => r.data)));
    if (stopped) return false;
    if (!evals.length) {
      clear(listBox, h("p", { class: "muted" }, "No evals yet: create one from a file below, or with the openai SDK's ",
        h("code", {}, "client.evals.create"), "."));
      return false;
    }
    clear(listBox, evals.map((ev, i) => evalCard(ev, runs[i], wanted, ev.id === focus)));
    return runs.flat().some((r) => ACTIVE.includes(r.status));
  }
  async function tick() {
    let busy = false;
    try { busy = await load(); } catch (err) { if (!stopped) clear(listBox, notice("error", err.message)); }
    if (!stopped && busy) timer = setTimeout(tick, REFRESH_MS * 2);
  }
  await tick();
  const el = focus && document.getElementById(`eval-${focus}`);
  if (el) el.scrollIntoView();
  return () => { stopped = true; clearTimeout(timer); };
}

function evalCard(ev, runs, wanted, focused) {
  const criteria = ev.testing_criteria || [];
  const template = runs.find((r) => r.data_source && r.data_source.type === "completions");
  const status = h("div", { "aria-live": "polite" });
  let again = null;
  if (wanted && template) {
    again = h("button", { type: "button", class: "small", "data-eval": ev.id, onclick: async () => {
      again.disabled = true;
      clear(status, h("p", { class: "muted" }, "Starting the run…"));
      try {
        const ds = { ...template.data_source, model: wanted };
        const run = await api(`/evals/${ev.id}/runs`, { method: "POST", body: { name: wanted, data_source: ds } });
        location.hash = runHref(run);
      } catch (err) {
        again.disabled = false;
        clear(status, notice("error", err.message));
      }
    } }, `Run with ${wanted}`);
  }
  const hasPairwise = runs.some((r) => r.pairwise && r.pairwise.length);
  const columns = [
    { label: "Run", cell: (r) => h("a", { href: runHref(r) }, r.name && r.name !== r.model ? r.name : r.id) },
    { label: "Model", cell: (r) => h("code", {}, r.model || "(answers in the file)") },
    { label: "Status", cell: (r) => runBadge(r.status) },
    { label: "Items", cell: progressCell },
    { label: "Pass rate", cell: passRate },
    { label: "Per criterion", cell: criteriaCell },
  ];
  if (hasPairwise) {
    columns.push({ label: "Win rate vs baseline", cell: (r) => (r.pairwise && r.pairwise.length
      ? h("div", {}, r.pairwise.map((pw) => h("div", {}, winRate(pw), h("span", { class: "muted" }, ` vs ${pw.baseline_model}`))))
      : "–") });
  }
  columns.push({ label: "Created", cell: (r) => fmtTime(r.created_at) });
  return h("article", { class: `eval${focused ? " focused" : ""}`, id: `eval-${ev.id}` },
    h("div", { class: "row eval-head" }, h("h3", {}, ev.name || ev.id), h("code", { class: "muted" }, ev.id), again),
    h("ul", { class: "criteria" }, criteria.map((c) => h("li", {}, h("span", { class: "crit" }, c.name), " ",
      h("span", { class: "muted" }, `${c.type}: ${describeCriterion(c)}`)))),
    status,
    table(columns, runs, { empty: "No runs yet." }));
}

function newEvalForm(models, wanted) {
  const file = h("input", { type: "file", id: "eval-file", accept: ".jsonl,.json,application/jsonl", required: true });
  const name = h("input", { type: "text", id: "eval-name", placeholder: "from the file name" });
  const model = modelSelect("eval-model", models, wanted || (models[0] && models[0].id));
  const promptField = h("select", { id: "eval-prompt-field", disabled: true });
  const refField = h("select", { id: "eval-reference-field", disabled: true });
  const operation = h("select", { id: "eval-operation" }, OPERATIONS.map(([v, label]) => h("option", { value: v }, label)));
  const maxTokens = h("input", { type: "number", id: "eval-max-tokens", min: "1", max: "4096", step: "1", value: "32" });
  const submit = h("button", { type: "submit" }, "Create eval and run");
  const status = h("div", { id: "eval-form-status", "aria-live": "polite" });
  let item = null;

  file.addEventListener("change", async () => {
    clear(status);
    item = null;
    promptField.disabled = refField.disabled = true;
    const f = file.files[0];
    if (!f) return;
    try { item = firstItem(await f.slice(0, 1 << 20).text()); } catch (err) {
      status.append(notice("error", `${f.name}: ${err.message}`));
      return;
    }
    const keys = Object.keys(item);
    const pick = (re, fallback) => keys.find((k) => re.test(k)) || fallback;
    const p = pick(/question|prompt|input|query/i, keys[0]);
    const r = pick(/answer|reference|expected|target|label/i, keys.find((k) => k !== p) || keys[0]);
    clear(promptField, keys.map((k) => h("option", { value: k, selected: k === p }, k)));
    clear(refField, keys.map((k) => h("option", { value: k, selected: k === r }, k)));
    promptField.disabled = refField.disabled = false;
    if (!name.value) name.value = f.name.replace(/\.jsonl?$/i, "");
  });

  const form = h("form", { class: "card", id: "eval-form" },
    h("h2", {}, "New eval from a file"),
    h("p", { class: "muted" }, "A JSONL file with one item per line (", h("code", {}, '{"item": {"question": …, "answer": …}}'),
      " or the bare object). The item schema comes from the first item's fields; the model answers each item's prompt field",
      " and a string check compares its output with the reference field."),
    h("div", { class: "grid" },
      field("Items file", file), field("Name", name), field("Model", model),
      field("Prompt field", promptField, "Sent as the user message: {{item.<field>}}"),
      field("Reference field", refField), field("Check", operation, "The output against the reference field"),
      field("Max tokens", maxTokens, "Greedy decoding (temperature 0)")),
    h("div", { class: "row" }, submit), status);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(status);
    const f = file.files[0];
    const max = parseInt(maxTokens.value, 10);
    if (!f || !item) { status.append(notice("error", "Choose an items file first.")); return; }
    if (!(max >= 1)) { status.append(notice("error", "Max tokens must be at least 1.")); return; }
    submit.disabled = true;
    status.append(h("p", { class: "muted" }, "Uploading the items…"));
    try {
      const uploaded = await uploadItems(f);
      const ref = refField.value;
      const ev = await api("/evals", { method: "POST", body: {
        name: name.value.trim() || f.name,
        data_source_config: { type: "custom", item_schema: itemSchema(item), include_sample_schema: true },
        testing_criteria: [{ type: "string_check", name: `${operation.value === "eq" ? "equals" : "contains"} ${ref}`,
          operation: operation.value, input: "{{sample.output_text}}", reference: `{{item.${ref}}}` }],
      } });
      const run = await api(`/evals/${ev.id}/runs`, { method: "POST", body: {
        name: model.value,
        data_source: { type: "completions", model: model.value, source: { type: "file_id", id: uploaded.id },
          input_messages: { type: "template", template: [{ role: "user", content: `{{item.${promptField.value}}}` }] },
          sampling_params: { temperature: 0, max_completion_tokens: max } },
      } });
      location.hash = runHref(run);
    } catch (err) {
      submit.disabled = false;
      clear(status, notice("error", err.message));
    }
  });
  return form;
}

// ---- a run: progress, results, items side by side ----------------------------------------------------

function messageText(m) {
  if (!m) return "";
  if (typeof m.content === "string") return m.content;
  if (Array.isArray(m.content)) return m.content.map((p) => p.text || "").join("");
  return "";
}

function usedItemFields(run) {
  const spec = (run.data_source && run.data_source.input_messages) || {};
  const text = JSON.stringify(spec.template || spec.item_reference || "");
  return new Set([...text.matchAll(/item\.(\w+)/g)].map((m) => m[1]));
}

function promptCell(o) {
  const input = (o.sample && o.sample.input) || [];
  return h("div", { class: "io" }, input.map((m) => h("div", { class: `turn ${m.role}` },
    input.length > 1 ? h("span", { class: "role" }, `${m.role}: `) : null, messageText(m))));
}

function referenceCell(o, used) {
  const entries = Object.entries(o.datasource_item || {}).filter(([k]) => !used.has(k));
  if (!entries.length) return h("span", { class: "muted" }, "–");
  return h("dl", { class: "item-fields" }, entries.map(([k, v]) => [h("dt", {}, k),
    h("dd", {}, typeof v === "string" ? v : JSON.stringify(v))]));
}

function outputCell(sample) {
  if (!sample) return h("span", { class: "muted" }, "–");
  if (sample.error) return h("span", { class: "error-text" }, sample.error.message || String(sample.error));
  return h("div", { class: "io output" }, (sample.output || []).map(messageText).join("\n"));
}

function gradesCell(o) {
  return h("ul", { class: "grades" }, (o.results || []).map((r) => h("li", { class: r.passed ? "pass" : "fail" },
    h("span", { class: "mark", "aria-hidden": "true" }, r.error ? "!" : r.passed ? "✓" : "✗"), " ",
    h("span", { class: "crit" }, r.name), " ",
    h("span", { class: "muted" }, r.error ? r.error : r.outcome ? `${r.outcome} (${fmtNum(r.reward, 3)} vs ${fmtNum(r.baseline_reward, 3)})`
      : `${r.passed ? "pass" : "fail"}, score ${fmtNum(r.score, 3)}`))));
}

async function renderRun(root, evalId, runId) {
  let [ev, run] = await Promise.all([api(`/evals/${evalId}`), api(`/evals/${evalId}/runs/${runId}`)]);
  let items = [];
  const used = usedItemFields(run);
  const baseline = run.data_source && run.data_source.baseline_model;
  const title = h("h1", {}, `Run ${run.name || run.id} `, h("span", { id: "run-status" }, runBadge(run.status)));
  const meta = h("dl", { class: "meta", id: "run-meta" });
  const summary = h("dl", { class: "stats", id: "run-summary" });
  const criteriaBox = h("div", { id: "run-criteria" });
  const pairBox = h("div", { id: "run-pairwise" });
  const itemsBox = h("div", { id: "run-items" });
  const filter = h("select", { id: "items-filter" },
    h("option", { value: "all" }, "All items"), h("option", { value: "failures" }, "Failures only (failed or errored)"));
  const count = h("span", { class: "muted", id: "items-count", "aria-live": "polite" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-run", onclick: async () => {
    cancel.disabled = true;
    try { run = await api(`/evals/${evalId}/runs/${runId}/cancel`, { method: "POST" }); draw(); } catch (err) {
      actionStatus.append(notice("error", err.message));
    }
  } }, "Cancel run");
  const actionStatus = h("div", { "aria-live": "polite" });
  const again = run.data_source && run.data_source.type === "completions" ? rerunForm(run, await chatModels(), actionStatus) : null;
  root.append(title,
    h("p", {}, h("a", { href: `#/evals?eval=${encodeURIComponent(evalId)}` }, `← ${ev.name || ev.id}`)),
    h("div", { class: "columns" },
      h("section", { class: "card" }, meta, h("div", { class: "row" }, cancel), again, actionStatus),
      h("section", { class: "card" }, h("h2", {}, "Results"), summary, pairBox)),
    h("section", { class: "card" }, h("h2", {}, "Per criterion"), criteriaBox),
    h("section", { class: "card", "aria-labelledby": "items-title" },
      h("div", { class: "row items-head" }, h("h2", { id: "items-title" }, "Items"), field("Show", filter), count), itemsBox));
  filter.addEventListener("change", drawItems);

  function draw() {
    clear(title.querySelector("#run-status"), runBadge(run.status));
    const ds = run.data_source || {};
    const src = ds.source || {};
    clear(meta,
      item("Eval", h("a", { href: `#/evals?eval=${encodeURIComponent(evalId)}` }, ev.name || ev.id)),
      item("Model", run.model ? h("code", {}, run.model) : "answers in the file"),
      baseline ? item("Baseline model", h("code", {}, baseline)) : null,
      item("Items from", src.type === "file_id" ? h("a", { href: `#/data/${src.id}` }, src.id)
        : `${fmtInt((src.content || []).length)} inline items`),
      ds.sampling_params ? item("Sampling", Object.entries(ds.sampling_params).map(([k, v]) => `${k} ${v}`).join(", ") || "defaults") : null,
      item("Created", fmtTime(run.created_at)), run.finished_at ? item("Finished", fmtTime(run.finished_at)) : null,
      run.error && run.error.message ? item("Error", h("span", { class: "error-text" }, run.error.message)) : null);
    cancel.disabled = !ACTIVE.includes(run.status) || run.requested === "cancel";
    const c = run.result_counts;
    const p = run.progress || { completed: c.passed + c.failed + c.errored, total: c.total };
    clear(summary,
      item("Progress", h("span", {}, h("progress", { max: p.total || 1, value: p.completed, "aria-label": "run progress" }),
        ` ${fmtInt(p.completed)} / ${fmtInt(p.total)}`)),
      item("Pass rate", fmtPercent(share(c.passed, c.failed + c.errored))),
      item("Passed", fmtInt(c.passed)), item("Failed", fmtInt(c.failed)), item("Errored", fmtInt(c.errored)));
    clear(pairBox, (run.pairwise || []).map((pw) => h("div", { class: "pairwise" },
      h("h3", {}, `Win rate: ${pw.model} vs ${pw.baseline_model}`), h("p", {}, winRate(pw)),
      h("p", { class: "muted" }, `Judged by the reward model ${pw.judge} (criterion ${pw.testing_criteria}); ties count half. `
        + `Wilson score interval over ${pw.n} items.`))));
    const byName = Object.fromEntries((ev.testing_criteria || []).map((x) => [x.name, x]));
    clear(criteriaBox, table([
      { label: "Criterion", cell: (r) => h("span", { class: "crit" }, r.testing_criteria) },
      { label: "Check", cell: (r) => (byName[r.testing_criteria] ? h("code", {}, describeCriterion(byName[r.testing_criteria])) : "–") },
      { label: "Passed", cell: (r) => fmtInt(r.passed) },
      { label: "Failed", cell: (r) => fmtInt(r.failed) },
      { label: "Pass rate", cell: (r) => h("span", { class: "progress-cell" }, meter(share(r.passed, r.failed), `${r.testing_criteria} pass rate`),
        ` ${fmtPercent(share(r.passed, r.failed))}`) },
    ], run.per_testing_criteria_results || [], { empty: "No graded items yet." }));
  }

  function drawItems() {
    const failures = filter.value === "failures";
    const shown = failures ? items.filter((o) => o.status !== "pass") : items;
    count.textContent = `${fmtInt(shown.length)} of ${fmtInt(items.length)} items`;
    const columns = [
      { label: "#", cell: (o) => String(o.datasource_item_id) },
      { label: "Prompt", cell: promptCell },
      { label: "Reference (item)", cell: (o) => referenceCell(o, used) },
      { label: baseline ? `Output: ${run.model}` : "Output", cell: (o) => outputCell(o.sample) },
    ];
    if (baseline) columns.push({ label: `Output: ${baseline}`, cell: (o) => outputCell(o.baseline_sample) });
    columns.push({ label: "Grades", cell: gradesCell }, { label: "Status", cell: (o) => h("span", { class: `badge item-${o.status}` }, o.status) });
    clear(itemsBox, table(columns, shown, { empty: failures ? "No failures." : "No items graded yet." }));
    for (const [i, tr] of [...itemsBox.querySelectorAll("tbody tr")].entries()) tr.className = `item-row item-${shown[i].status}`;
  }

  async function refresh() {
    [run, items] = await Promise.all([api(`/evals/${evalId}/runs/${runId}`),
      listAll(`/evals/${evalId}/runs/${runId}/output_items`, MAX_ITEMS)]);
    draw();
    drawItems();
  }

  let timer = null, stopped = false;
  async function tick() {
    try { await refresh(); } catch (err) { if (!stopped) actionStatus.replaceChildren(notice("error", err.message)); }
    if (!stopped && ACTIVE.includes(run.status)) timer = setTimeout(tick, REFRESH_MS);
  }
  draw();
  await tick();
  return () => { stopped = true; clearTimeout(timer); };
}

/** "Run these items with another model": a new run with this run's data source, sampling and template. */
function rerunForm(run, models, status) {
  const select = modelSelect("rerun-model", models, models.some((m) => m.id !== run.model)
    ? models.find((m) => m.id !== run.model).id : run.model);
  const button = h("button", { type: "submit", class: "small" }, "Run");
  const form = h("form", { class: "row rerun", id: "rerun-form" },
    h("label", { for: select.id }, "Run these items with"), select, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    try {
      const body = { name: select.value, data_source: { ...run.data_source, model: select.value } };
      const next = await api(`/evals/${run.eval_id}/runs`, { method: "POST", body });
      location.hash = runHref(next);
    } catch (err) {
      button.disabled = false;
      clear(status, notice("error", err.message));
    }
  });
  return form;
}

function item(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}
