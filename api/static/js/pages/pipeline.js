// Pipeline page: the three stages of an InstructGPT pipeline (SFT -> reward model -> PPO) with each
// stage's job, status and progress; refreshed every few seconds; cancel stops the whole pipeline.

import { api } from "../api.js";
import { badge, clear, fmtTime, h, notice } from "../dom.js";
import { progressCell } from "./jobs.js";

const REFRESH_MS = 3000;
const STAGE_NAMES = { sft: "Supervised fine-tuning", reward_model: "Reward model", ppo: "PPO" };

export async function render(root, [pipelineId]) {
  const head = h("div", {});
  const stagesBox = h("ol", { class: "stages", id: "pipeline-stages" });
  const status = h("div", { "aria-live": "polite" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-pipeline" }, "Cancel pipeline");
  root.append(head, h("section", { class: "card" }, stagesBox, h("div", { class: "row" }, cancel), status));
  let stopped = false, timer = null, p = null;

  const draw = () => {
    clear(head, h("h1", {}, `Pipeline ${p.id} `, badge(p.status)),
      h("p", { class: "muted" }, `Base model ${p.model} · created ${fmtTime(p.created_at)}`
        + (p.current_stage ? ` · now: ${STAGE_NAMES[p.current_stage]}` : "")),
      p.error && p.error.message ? notice("error", p.error.message) : null,
      p.fine_tuned_model ? h("p", {}, "Result: ", h("a", { href: `#/playground?model=${encodeURIComponent(p.fine_tuned_model)}` },
        p.fine_tuned_model)) : null);
    clear(stagesBox, p.stages.map((s, i) => h("li", { class: `stage status-${s.status}` },
      h("h2", {}, `${i + 1}. ${STAGE_NAMES[s.name] || s.name} `, badge(s.status)),
      h("p", {}, "Job ", h("a", { href: `#/jobs/${s.job_id}` }, s.job_id), " · ", progressCell(s.job)),
      s.fine_tuned_model ? h("p", {}, "Model ", h("code", {}, s.fine_tuned_model)) : null)));
    cancel.disabled = p.status !== "running";
  };
  const load = async () => {
    try {
      p = await api(`/fine_tuning/pipelines/${pipelineId}`);
      draw();
    } catch (err) {
      clear(status, notice("error", err.message));
    }
    if (!stopped && (!p || p.status === "running")) timer = setTimeout(load, REFRESH_MS);
  };
  cancel.addEventListener("click", async () => {
    try {
      p = await api(`/fine_tuning/pipelines/${pipelineId}/cancel`, { method: "POST" });
      draw();
    } catch (err) {
      clear(status, notice("error", err.message));
    }
  });
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}
