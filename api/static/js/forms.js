// Settings forms generated from a method's schema (GET /console/methods, built on the server from the ml
// config dataclasses): one labelled control per setting with its default and docstring, nested groups as
// fieldsets, adapter-dependent groups shown only when they apply. collect() parses and type-checks the
// values and returns only the settings that differ from their defaults.

import { field, h, nextId } from "./dom.js";

// Settings most runs touch; everything else sits under "Advanced".
const MAIN = new Set(["adapter", "n_epochs", "max_steps", "batch_size", "learning_rate", "learning_rate_multiplier",
  "max_seq_length", "max_length", "beta", "steps", "rollouts_per_step", "num_generations", "loss_type",
  "lora", "quant", "deepspeed", "sampling"]);

const GROUP_LABELS = { lora: "LoRA", quant: "QLoRA quantisation", deepspeed: "DeepSpeed", sampling: "Sampling" };
const label = (name) => GROUP_LABELS[name] || name.replace(/_/g, " ");

function text(v) {
  if (v == null) return "";
  return Array.isArray(v) ? v.join(", ") : String(v);
}

/** "[1, 1024]", "(0, 1]" or ">= 1": the range the server checks (the same rule, via the schema). */
function rangeText(r) {
  if (!r) return "";
  if (r.max == null) return `${r.min_open ? ">" : ">="} ${r.min}`;
  return `${r.min_open ? "(" : "["}${r.min}, ${r.max}${r.max_open ? ")" : "]"}`;
}

function hint(spec) {
  const d = spec.default == null ? "none" : text(spec.default);
  const range = spec.range ? ` Range: ${rangeText(spec.range)}${spec.auto ? ' or "auto"' : ""}.` : "";
  return `${spec.doc}${range} Default: ${d}.`.trim();
}

const within = (r) => (r.max == null ? rangeText(r) : `in ${rangeText(r)}`);

function inRange(r, x) {
  if (!r) return true;
  const aboveMin = r.min == null || (r.min_open ? x > r.min : x >= r.min);
  const belowMax = r.max == null || (r.max_open ? x < r.max : x <= r.max);
  return aboveMin && belowMax;
}

export class SettingsForm {
  /** schema: {settings: [...]} of one method; path: prefix of nested names ("" at the top). */
  constructor(schema, { idPrefix = "s" } = {}) {
    this.controls = new Map(); // dotted name -> {spec, get(), set(v), wrap, errorEl}
    this.groups = new Map(); // group name -> {fieldset, enabled()}
    this.idPrefix = idPrefix;
    const main = [], advanced = [];
    for (const spec of schema.settings) {
      const node = spec.kind === "group" ? this.group(spec, "") : this.control(spec, "");
      (MAIN.has(spec.name) ? main : advanced).push(node);
    }
    this.el = h("div", { class: "settings" },
      h("div", { class: "grid" }, main.filter((n) => n.tagName !== "FIELDSET")),
      main.filter((n) => n.tagName === "FIELDSET"),
      advanced.length ? h("details", { class: "advanced" }, h("summary", {}, "Advanced settings"),
        h("div", { class: "grid" }, advanced.filter((n) => n.tagName !== "FIELDSET")),
        advanced.filter((n) => n.tagName === "FIELDSET")) : null);
    const adapter = this.controls.get("adapter");
    if (adapter) {
      adapter.input.addEventListener("change", () => this.applyVisibility());
      this.applyVisibility();
    }
  }

  control(spec, prefix) {
    const name = prefix + spec.name;
    const id = `${this.idPrefix}-${name.replace(/\./g, "-")}`;
    let input, get, set;
    if (spec.kind === "bool" && !spec.auto) {
      input = h("input", { type: "checkbox", id, name, checked: !!spec.default });
      get = () => input.checked;
      set = (v) => { input.checked = !!v; };
    } else if (spec.kind === "choice" || spec.kind === "bool") {
      const options = spec.kind === "bool" ? ["auto", true, false] : spec.choices;
      input = h("select", { id, name }, options.map((o, i) => h("option", { value: String(i) }, String(o))));
      input.value = String(Math.max(0, options.findIndex((o) => o === spec.default)));
      get = () => options[Number(input.value)];
      set = (v) => { input.value = String(Math.max(0, options.findIndex((o) => o === v))); };
    } else {
      const numeric = spec.kind === "int" || spec.kind === "float";
      input = h("input", { type: "text", id, name, value: text(spec.default), spellcheck: "false",
        inputmode: numeric && !spec.auto ? (spec.kind === "int" ? "numeric" : "decimal") : null,
        placeholder: spec.nullable ? "none" : null });
      get = () => input.value.trim();
      set = (v) => { input.value = text(v); };
    }
    const errorEl = h("small", { class: "field-error", id: nextId("err"), "aria-live": "polite" });
    const wrap = field(spec.name.replace(/_/g, " "), input, hint(spec));
    wrap.append(errorEl);
    if (spec.kind === "bool" && !spec.auto) wrap.classList.add("checkbox");
    this.controls.set(name, { spec, input, get, set, wrap, errorEl });
    input.addEventListener("input", () => { errorEl.textContent = ""; input.removeAttribute("aria-invalid"); });
    return wrap;
  }

  group(spec, prefix) {
    const name = prefix + spec.name;
    const fieldset = h("fieldset", { class: "group", dataset: { group: name } }, h("legend", {}, label(spec.name)));
    let enabled = () => true;
    if (spec.nullable) {
      const toggle = h("input", { type: "checkbox", id: `${this.idPrefix}-${name}-enabled`, checked: spec.default != null });
      const inner = h("div", { class: "grid" });
      fieldset.append(field(`Use ${label(spec.name)}`, toggle, spec.doc), inner);
      for (const sub of spec.fields) inner.append(this.control(sub, `${name}.`));
      const sync = () => { inner.hidden = !toggle.checked; };
      toggle.addEventListener("change", sync);
      sync();
      enabled = () => toggle.checked;
      fieldset.querySelector(".field").classList.add("checkbox");
    } else {
      fieldset.append(h("p", { class: "hint" }, spec.doc),
        h("div", { class: "grid" }, spec.fields.map((sub) => this.control(sub, `${name}.`))));
    }
    this.groups.set(name, { fieldset, enabled, nullable: !!spec.nullable });
    return fieldset;
  }

  applyVisibility() {
    const adapter = this.controls.get("adapter").get();
    const show = { lora: adapter === "lora" || adapter === "qlora", quant: adapter === "qlora", deepspeed: adapter !== "qlora" };
    for (const [name, g] of this.groups) if (name in show) g.fieldset.hidden = !show[name];
  }

  visible(name) {
    const top = name.split(".")[0];
    const g = this.groups.get(top);
    return !g || (!g.fieldset.hidden && (name === top || g.enabled()));
  }

  /** {values, errors}: values holds only the changed settings, nested as the API expects. */
  collect() {
    const values = {}, errors = [];
    this.clearErrors();
    for (const [name, c] of this.controls) {
      if (!this.visible(name)) continue;
      const [value, error] = parse(c.spec, c.get());
      if (error) { errors.push({ name, message: error }); continue; }
      if (same(value, c.spec.default)) continue;
      setPath(values, name, value);
    }
    for (const [name, g] of this.groups) {
      if (g.fieldset.hidden) continue;
      if (g.nullable && g.enabled() && !(name in values)) values[name] = {}; // on, with its defaults
    }
    errors.forEach((e) => this.showError(e.name, e.message));
    return { values, errors };
  }

  clearErrors() {
    for (const c of this.controls.values()) {
      c.errorEl.textContent = "";
      c.input.removeAttribute("aria-invalid");
    }
  }

  /** Mark a setting invalid; `name` is dotted ("lora.r"). Returns false if no such control. */
  showError(name, message) {
    const c = this.controls.get(name);
    if (!c) return false;
    c.errorEl.textContent = message;
    c.input.setAttribute("aria-invalid", "true");
    const details = c.wrap.closest("details");
    if (details) details.open = true;
    c.input.focus();
    return true;
  }

  /** The current value of a setting (parsed), or its default when invalid or hidden. */
  value(name) {
    const c = this.controls.get(name);
    if (!c || !this.visible(name)) return c ? c.spec.default : undefined;
    const [v, err] = parse(c.spec, c.get());
    return err ? c.spec.default : v;
  }

  /** Whether a group applies: shown, and switched on if it is optional (DeepSpeed). */
  groupOn(name) {
    const g = this.groups.get(name);
    return !!g && !g.fieldset.hidden && g.enabled();
  }

  set(name, value) {
    const c = this.controls.get(name);
    if (c) c.set(value);
  }

  onInput(fn) {
    this.el.addEventListener("input", fn);
    this.el.addEventListener("change", fn);
  }
}

function parse(spec, raw) {
  if (spec.kind === "bool" || spec.kind === "choice") return [raw, null];
  if (raw === "") return spec.nullable ? [null, null] : [null, "required"];
  if (spec.auto && raw.toLowerCase() === "auto") return ["auto", null];
  const orAuto = spec.auto ? ' or "auto"' : "";
  if (spec.kind === "int") {
    if (!/^[+-]?\d+$/.test(raw)) return [null, `must be a whole number${orAuto}`];
    const x = parseInt(raw, 10);
    if (!inRange(spec.range, x)) return [null, `must be an integer ${within(spec.range)}${orAuto}`];
    return [x, null];
  }
  if (spec.kind === "float") {
    const x = Number(raw);
    if (!Number.isFinite(x)) return [null, `must be a number${orAuto}`];
    if (!inRange(spec.range, x)) return [null, `must be a number ${within(spec.range)}${orAuto}`];
    return [x, null];
  }
  if (spec.list && raw.includes(",")) return [raw.split(",").map((s) => s.trim()).filter(Boolean), null];
  return [raw, null];
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function setPath(obj, dotted, value) {
  const parts = dotted.split(".");
  let o = obj;
  for (const p of parts.slice(0, -1)) o = o[p] = o[p] || {};
  o[parts[parts.length - 1]] = value;
}
