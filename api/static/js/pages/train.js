// Train page: one form per method (supervised with LoRA / QLoRA / full / DeepSpeed, DPO, reward model,
// PPO / RLOO / GRPO) and the three-stage InstructGPT pipeline, generated from the method schemas with
// their defaults, checked on the page and by POST /console/methods/check before the job is created,
// with an estimate of tokens and time from the training file's statistics.

import { ApiError, api, consoleApi, listAll } from "../api.js";
import { clear, field, fmtDuration, fmtInt, h, notice } from "../dom.js";
import { estimate } from "../estimate.js";
import { SettingsForm } from "../forms.js";

const LABELS = { supervised: "Supervised (SFT)", dpo: "DPO", reward_model: "Reward model", ppo: "PPO",
  rloo: "RLOO", grpo: "GRPO", pipeline: "InstructGPT pipeline (SFT → reward model → PPO)" };
const PIPELINE_STAGES = [["sft", "supervised", "sft_file"], ["reward_model", "reward_model", "preference_file"],
  ["ppo", "ppo", "prompts_file"]];

export async function render(root, [query]) {
  const params = new URLSearchParams(query || "");
  const [{ methods }, files, models] = await Promise.all([consoleApi("/methods"), listAll("/files"),
    api("/models").then((r) => r.data)]);
  const fileCache = new Map();
  const loadFile = async (id) => {
    if (!id) return null;
    if (!fileCache.has(id)) fileCache.set(id, api(`/files/${id}`));
    return fileCache.get(id);
  };
  const preselected = files.find((f) => f.id === params.get("file"));
  const first = preselected ? Object.keys(methods).find((m) => methods[m].data_kind === preselected.kind) : "supervised";

  const choices = h("fieldset", { class: "methods" }, h("legend", {}, "Method"),
    [...Object.keys(methods), "pipeline"].map((m) => h("label", { class: "radio" },
      h("input", { type: "radio", name: "method", value: m, checked: m === first }), ` ${LABELS[m] || m}`)));
  const formBox = h("div", {});
  root.append(h("h1", {}, "Train"), h("section", { class: "card" }, choices), formBox);

  const show = () => {
    const m = choices.querySelector("input:checked").value;
    clear(formBox);
    if (m === "pipeline") pipelineForm(formBox, methods, files, models);
    else jobForm(formBox, m, methods[m], files, models, loadFile, preselected);
  };
  choices.addEventListener("change", show);
  show();
}

function modelSelect(models, { kinds, label, required = true, id }) {
  const usable = models.filter((m) => kinds.includes(m.kind));
  const select = h("select", { id, required }, required ? null : h("option", { value: "" }, "none"),
    usable.map((m) => h("option", { value: m.id }, m.kind === "base" ? m.id : `${m.id} (${m.kind.replace("_", " ")})`)));
  return field(label, select, usable.length ? null : `No ${kinds.join(" or ").replace("_", " ")} models yet.`);
}

function fileSelect(files, kind, { label, required = true, id, selected }) {
  const usable = files.filter((f) => f.kind === kind);
  const select = h("select", { id, required }, required ? null : h("option", { value: "" }, "none"),
    usable.map((f) => h("option", { value: f.id, selected: f.id === selected }, `${f.filename} · ${f.n_examples} examples · ${f.id}`)));
  return field(label, select, usable.length ? `${kind} files only` : `No ${kind} files yet: upload one on the Data page.`);
}

function jobForm(box, method, schema, files, models, loadFile, preselected) {
  const settings = new SettingsForm(schema, { idPrefix: method });
  const base = modelSelect(models, { kinds: ["base", "fine_tuned"], label: "Base model", id: "job-model" });
  const train = fileSelect(files, schema.data_kind, { label: "Training file", id: "job-training-file",
    selected: preselected && preselected.id });
  const valid = fileSelect(files, schema.data_kind, { label: "Validation file (optional)", required: false, id: "job-validation-file" });
  const suffix = field("Suffix (optional)", h("input", { type: "text", id: "job-suffix", maxlength: "64", pattern: "[^:]*" }),
    "Part of the fine-tuned model's name; no colons.");
  const inputs = schema.inputs.map((inp) => modelSelect(models, { kinds: [inp.model_kind], label: inp.name.replace(/_/g, " "),
    id: `job-${inp.name}` }));
  const estimateBox = h("div", { class: "estimate", id: "estimate", "aria-live": "polite" });
  const status = h("div", { id: "train-status", "aria-live": "polite" });
  const form = h("form", { class: "card", id: "train-form", novalidate: true },
    h("h2", {}, LABELS[method]), h("p", { class: "muted" }, schema.doc),
    h("div", { class: "grid" }, base, train, valid, suffix, inputs),
    h("h3", {}, "Settings"), settings.el, estimateBox,
    h("button", { type: "submit" }, "Start training"), status);
  box.append(form);

  const get = (name) => (name === "deepspeed" ? settings.groupOn("deepspeed") : settings.value(name));
  const refresh = async () => {
    const file = await loadFile(form.querySelector("#job-training-file").value).catch(() => null);
    const est = estimate(method, get, file);
    if (!est) { clear(estimateBox, h("p", { class: "muted" }, "Choose a training file to see an estimate.")); return; }
    clear(estimateBox, h("h3", {}, "Estimate"), h("p", {},
      `≈ ${fmtInt(est.steps)} steps, ≈ ${fmtInt(est.tokens)} training tokens`,
      est.generated ? ` (${fmtInt(est.generated)} sampled)` : "",
      `, ≈ ${fmtDuration(est.seconds)}`), h("small", { class: "hint" },
      `Assumes ~${est.rate} tokens/s (${est.basis}); a GPU is much faster, larger models slower.`));
  };
  settings.onInput(refresh);
  settings.el.addEventListener("input", () => clear(status)); // an old complaint no longer applies
  form.querySelector("#job-training-file").addEventListener("change", refresh);
  refresh();

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(status);
    const { values, errors } = settings.collect();
    const missing = [...form.querySelectorAll("select[required]")].filter((s) => !s.value);
    if (errors.length || missing.length) {
      missing.forEach((s) => s.setAttribute("aria-invalid", "true"));
      status.append(notice("error", `Please fix: ${[...missing.map((s) => form.querySelector(`label[for=${s.id}]`).textContent),
        ...errors.map((x) => `${x.name} ${x.message}`)].join("; ")}`));
      return;
    }
    for (const inp of schema.inputs) values[inp.name] = form.querySelector(`#job-${inp.name}`).value;
    const body = { model: form.querySelector("#job-model").value, training_file: form.querySelector("#job-training-file").value,
      method: { type: method, [method]: values } };
    const v = form.querySelector("#job-validation-file").value;
    if (v) body.validation_file = v;
    const sfx = form.querySelector("#job-suffix").value.trim();
    if (sfx) body.suffix = sfx;
    if (!(await checked(settings, method, values, status))) return;
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      serverError(settings, method, err, status);
    }
  });
}

async function checked(settings, method, values, status) {
  const r = await consoleApi("/methods/check", { type: method, [method]: values });
  if (r.ok) return true;
  serverError(settings, method, new ApiError(400, { error: { message: `${r.param}: ${r.message}`, param: r.param } }), status);
  return false;
}

function serverError(settings, method, err, status) {
  const prefix = `method.${method}.`;
  if (err.param && err.param.startsWith(prefix)) settings.showError(err.param.slice(prefix.length), err.message);
  status.append(notice("error", err.message));
}

function pipelineForm(box, methods, files, models) {
  const forms = {};
  const status = h("div", { id: "train-status", "aria-live": "polite" });
  const fileFields = PIPELINE_STAGES.map(([, m, key]) => fileSelect(files, methods[m].data_kind, {
    label: { sft_file: "SFT file", preference_file: "Preference file", prompts_file: "Prompts file" }[key], id: `pipe-${key}` }));
  const stageBoxes = PIPELINE_STAGES.map(([stage, m], i) => {
    forms[stage] = new SettingsForm({ ...methods[m], settings: methods[m].settings }, { idPrefix: `pipe-${stage}` });
    return h("details", { class: "stage", open: i === 0 }, h("summary", {}, `Stage ${i + 1}: ${LABELS[m]}`), forms[stage].el);
  });
  const form = h("form", { class: "card", id: "pipeline-form", novalidate: true },
    h("h2", {}, LABELS.pipeline),
    h("p", { class: "muted" }, "Three chained jobs: supervised fine-tuning, a reward model on preference pairs, then PPO "
      + "against that reward model. Each stage starts when the one before it succeeds."),
    h("div", { class: "grid" }, modelSelect(models, { kinds: ["base", "fine_tuned"], label: "Base model", id: "pipe-model" }),
      fileFields, field("Suffix (optional)", h("input", { type: "text", id: "pipe-suffix", maxlength: "64" }))),
    stageBoxes, h("button", { type: "submit" }, "Start pipeline"), status);
  box.append(form);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(status);
    const stages = {};
    for (const [stage, m] of PIPELINE_STAGES) {
      const { values, errors } = forms[stage].collect();
      if (errors.length) { status.append(notice("error", `Stage ${stage}: please fix the marked settings.`)); return; }
      if (!(await checked(forms[stage], m, values, status))) return;
      stages[stage] = values;
    }
    const body = { model: form.querySelector("#pipe-model").value, stages };
    for (const [, , key] of PIPELINE_STAGES) body[key] = form.querySelector(`#pipe-${key}`).value;
    if (Object.values(body).some((v) => v === "")) { status.append(notice("error", "Choose a base model and all three files.")); return; }
    const sfx = form.querySelector("#pipe-suffix").value.trim();
    if (sfx) body.suffix = sfx;
    try {
      const p = await api("/fine_tuning/pipelines", { method: "POST", body });
      location.hash = `#/pipelines/${p.id}`;
    } catch (err) {
      status.append(notice("error", err.message));
    }
  });
}
