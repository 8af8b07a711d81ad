// Jobs page: the project's fine-tuning jobs with status and progress, and its pipelines; refreshed every
// few seconds while the page is open.

import { api } from "../api.js";
import { badge, clear, fmtTime, h, notice, table } from "../dom.js";

const REFRESH_MS = 3000;

export function progressCell(job) {
  const total = job.total_steps, step = job.step || 0;
  if (!total) return h("span", { class: "muted" }, step ? `step ${step}` : "–");
  return h("span", { class: "progress-cell" },
    h("progress", { max: total, value: step, "aria-label": `${job.id} progress` }), ` ${step}/${total}`);
}

export function methodOf(job) {
  return (job.method && job.method.type) || "supervised";
}

export async function render(root) {
  const jobsBox = h("div", { id: "jobs-table" });
  const pipesBox = h("div", { id: "pipelines-table" });
  root.append(h("h1", {}, "Jobs"),
    h("p", {}, h("a", { class: "button", href: "#/train" }, "New job")),
    h("section", { class: "card", "aria-labelledby": "jobs-title" }, h("h2", { id: "jobs-title" }, "Fine-tuning jobs"), jobsBox),
    h("section", { class: "card", "aria-labelledby": "pipes-title" }, h("h2", { id: "pipes-title" }, "Pipelines"), pipesBox));

  let timer = null, stopped = false;
  const load = async () => {
    try {
      const [jobs, pipes] = await Promise.all([api("/fine_tuning/jobs?limit=50"),
        api("/fine_tuning/pipelines?limit=20").catch(() => ({ data: [] }))]);
      clear(jobsBox, table([
        { label: "Job", cell: (j) => h("a", { href: `#/jobs/${j.id}` }, j.id) },
        { label: "Method", cell: methodOf },
        { label: "Base model", cell: (j) => j.model },
        { label: "Status", cell: (j) => badge(j.status) },
        { label: "Progress", cell: progressCell },
        { label: "Created", cell: (j) => fmtTime(j.created_at) },
        { label: "Result", cell: (j) => (j.fine_tuned_model
          ? h("a", { href: `#/playground?model=${encodeURIComponent(j.fine_tuned_model)}` }, j.fine_tuned_model) : "–") },
      ], jobs.data, { empty: "No jobs yet." }));
      clear(pipesBox, table([
        { label: "Pipeline", cell: (p) => h("a", { href: `#/pipelines/${p.id}` }, p.id) },
        { label: "Base model", cell: (p) => p.model || "–" },
        { label: "Status", cell: (p) => badge(p.status) },
        { label: "Stage", cell: (p) => p.current_stage || "–" },
        { label: "Created", cell: (p) => fmtTime(p.created_at) },
      ], pipes.data, { empty: "No pipelines yet." }));
    } catch (err) {
      clear(jobsBox, notice("error", err.message));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  };
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}
