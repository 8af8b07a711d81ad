// Models page: shared base models and the project's fine-tuned models, reward models and checkpoints
// with their lineage (parent, root base, the job and its training file); delete the project's own.

import { api, listAll } from "../api.js";
import { clear, fmtInt, fmtTime, h, notice, table } from "../dom.js";

export async function render(root) {
  const box = h("div", {});
  const status = h("div", { "aria-live": "polite" });
  root.append(h("h1", {}, "Models"), status, box);

  const load = async () => {
    const [models, jobs, files] = await Promise.all([api("/models").then((r) => r.data),
      listAll("/fine_tuning/jobs", 300), listAll("/files", 500)]);
    const jobById = new Map(jobs.map((j) => [j.id, j]));
    const fileName = new Map(files.map((f) => [f.id, f.filename]));
    const dataset = (m) => {
      const j = jobById.get(m.job_id);
      if (!j) return "–";
      return h("a", { href: `#/data/${j.training_file}` }, fileName.get(j.training_file) || j.training_file);
    };
    const chat = (m) => h("a", { href: `#/playground?model=${encodeURIComponent(m.id)}` }, "Chat");
    const del = (m) => h("button", { type: "button", class: "danger small", "aria-label": `Delete ${m.id}`,
      onclick: () => remove(m) }, "Delete");
    const job = (m) => (m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, m.job_id) : "–");
    const byKind = (k) => models.filter((m) => m.kind === k);

    clear(box,
      section("Base models", "base-models", table([
        { label: "Model", cell: (m) => h("code", {}, m.id) },
        { label: "Added", cell: (m) => fmtTime(m.created) },
        { label: "", cell: chat },
      ], byKind("base"))),
      section("Fine-tuned models", "fine-tuned-models", table([
        { label: "Model", cell: (m) => h("code", {}, m.id) },
        { label: "Parent", cell: (m) => h("code", {}, m.parent || "–") },
        { label: "Root", cell: (m) => m.root || "–" },
        { label: "Job", cell: job },
        { label: "Dataset", cell: dataset },
        { label: "Created", cell: (m) => fmtTime(m.created) },
        { label: "", cell: (m) => h("span", { class: "row" }, chat(m), del(m)) },
      ], byKind("fine_tuned"), { empty: "No fine-tuned models yet: start a job on the Train page." })),
      section("Reward models", "reward-models", table([
        { label: "Model", cell: (m) => h("code", {}, m.id) },
        { label: "Root", cell: (m) => m.root || "–" },
        { label: "Job", cell: job },
        { label: "Dataset", cell: dataset },
        { label: "", cell: del },
      ], byKind("reward_model"), { empty: "No reward models." })),
      section("Checkpoints", "checkpoints", table([
        { label: "Checkpoint", cell: (m) => h("code", {}, m.id) },
        { label: "Step", cell: (m) => fmtInt(m.step) },
        { label: "Of", cell: (m) => h("code", {}, m.parent || "–") },
        { label: "Job", cell: job },
        { label: "", cell: chat },
      ], byKind("checkpoint"), { empty: "No checkpoints." })));
  };

  async function remove(m) {
    if (!confirm(`Delete ${m.id}${m.kind === "checkpoint" ? "" : " and its checkpoints"}? This cannot be undone.`)) return;
    try {
      await api(`/models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
      await load();
      clear(status, notice("ok", `Deleted ${m.id}.`));
    } catch (err) {
      clear(status, notice("error", err.message));
    }
  }

  await load();
}

function section(title, id, content) {
  return h("section", { class: "card", "aria-labelledby": `${id}-title`, id },
    h("h2", { id: `${id}-title` }, title), content);
}
