// Job page: live loss (train and validation), learning-rate and method-metric curves drawn from the job's
// event stream (GET /v1/fine_tuning/jobs/{id}/events?stream=true) as it arrives, with throughput, ETA,
// the events log, checkpoints and cancel / pause / resume. Follows the job across pause and resume. A
// succeeded job links to the Evals page with its model preselected ("Evaluate this model").

import { api, openStream, readEvents } from "../api.js";
import { StepChart } from "../charts.js";
import { badge, clear, fmtDuration, fmtInt, fmtNum, fmtTime, h, notice, table } from "../dom.js";
import { methodOf } from "./jobs.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];
const REFRESH_MS = 3000;
const MAX_LOG = 400;
const EXTRA = { // method -> metrics worth a second chart
  dpo: [["accuracy", "accuracy"], ["margin", "reward margin"], ["valid_accuracy", "valid accuracy"]],
  reward_model: [["accuracy", "accuracy"], ["margin", "margin"], ["valid_accuracy", "valid accuracy"]],
  ppo: [["mean_reward", "mean reward"], ["approx_kl", "approx. KL"]],
  rloo: [["mean_reward", "mean reward"], ["kl", "KL"]],
  grpo: [["mean_reward", "mean reward"], ["kl", "KL"]],
};

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

export async function render(root, [jobId]) {
  let job = await api(`/fine_tuning/jobs/${jobId}`);
  const method = methodOf(job);
  const abort = new AbortController();
  const { signal } = abort;
  const latest = {};
  let lastEventId = null;
  let refreshedAt = 0;

  const title = h("h1", {}, `Job ${job.id} `, h("span", { id: "job-status" }, badge(job.status)));
  const meta = h("dl", { class: "meta", id: "job-meta" });
  const stats = h("dl", { class: "stats", id: "job-stats" });
  const buttons = {
    pause: h("button", { type: "button", id: "pause-job", onclick: () => act("pause") }, "Pause"),
    resume: h("button", { type: "button", id: "resume-job", onclick: () => act("resume") }, "Resume"),
    cancel: h("button", { type: "button", id: "cancel-job", class: "danger", onclick: () => act("cancel") }, "Cancel"),
  };
  const actionStatus = h("div", { "aria-live": "polite" });
  const evaluate = h("a", { class: "button", id: "evaluate-model", hidden: true }, "Evaluate this model");
  const chartsBox = h("div", { class: "charts" });
  const ckptBox = h("div", { id: "checkpoints" });
  const log = h("ol", { class: "events", id: "events", "aria-live": "off" });
  const streamStatus = h("p", { class: "muted", id: "stream-status", "aria-live": "polite" }, "Connecting to the event stream…");
  root.append(title, h("div", { class: "columns" },
    h("section", { class: "card" }, meta, h("div", { class: "row" }, Object.values(buttons), evaluate), actionStatus),
    h("section", { class: "card" }, h("h2", {}, "Progress"), stats, streamStatus)),
  h("section", { class: "card" }, h("h2", {}, "Curves"), chartsBox),
  h("div", { class: "columns" },
    h("section", { class: "card" }, h("h2", {}, "Checkpoints"), ckptBox),
    h("section", { class: "card" }, h("h2", {}, "Events"), h("div", { class: "log" }, log))));

  const lossKeys = method === "ppo" ? [["policy_loss", "policy loss"], ["value_loss", "value loss"]]
    : [["train_loss", "train loss"], ["valid_loss", "validation loss"]];
  const charts = [
    chart(chartsBox, "loss-chart", "Loss", lossKeys, "loss"),
    chart(chartsBox, "lr-chart", "Learning rate", [["learning_rate", "learning rate"]], "lr"),
  ];
  if (EXTRA[method]) charts.push(chart(chartsBox, "metric-chart", "Method metrics", EXTRA[method], ""));

  function drawJob() {
    clear(title.querySelector("#job-status"), badge(job.status));
    const link = (href, text) => h("a", { href }, text);
    clear(meta,
      item("Method", method), item("Base model", job.model),
      item("Training file", link(`#/data/${job.training_file}`, job.training_file)),
      job.validation_file ? item("Validation file", link(`#/data/${job.validation_file}`, job.validation_file)) : null,
      job.pipeline_id ? item("Pipeline", link(`#/pipelines/${job.pipeline_id}`, job.pipeline_id)) : null,
      item("Created", fmtTime(job.created_at)), job.finished_at ? item("Finished", fmtTime(job.finished_at)) : null,
      item("Fine-tuned model", job.fine_tuned_model
        ? link(`#/playground?model=${encodeURIComponent(job.fine_tuned_model)}`, job.fine_tuned_model) : "–"),
      job.error && job.error.message ? item("Error", h("span", { class: "error-text" }, job.error.message)) : null);
    evaluate.hidden = !(job.status === "succeeded" && job.fine_tuned_model);
    if (!evaluate.hidden) evaluate.href = `#/evals?model=${encodeURIComponent(job.fine_tuned_model)}`;
    const running = job.status === "running";
    buttons.pause.disabled = !["running", "queued", "validating_files"].includes(job.status) || job.requested === "pause";
    buttons.resume.disabled = job.status !== "paused";
    buttons.cancel.disabled = TERMINAL.includes(job.status) || job.requested === "cancel";
    const eta = job.estimated_finish && running ? job.estimated_finish - Date.now() / 1000 : null;
    const step = latest.step ?? job.step ?? 0, total = latest.total_steps ?? job.total_steps;
    clear(stats,
      item("Step", h("span", {}, h("progress", { max: total || 1, value: step, "aria-label": "training progress" }),
        ` ${fmtInt(step)} / ${total ? fmtInt(total) : "?"}`)),
      item("Train loss", fmtNum(latest.train_loss ?? latest.policy_loss)),
      item("Validation loss", fmtNum(latest.valid_loss)),
      item("Learning rate", fmtNum(latest.learning_rate, 3)),
      item("Throughput", latest.tokens_per_second != null ? `${fmtInt(Math.round(latest.tokens_per_second))} tokens/s` : "–"),
      item("ETA", eta != null ? `${fmtDuration(eta)} (${fmtTime(job.estimated_finish)})` : TERMINAL.includes(job.status) ? "done" : "–"),
      item("Trained tokens", fmtInt(latest.trained_tokens ?? job.trained_tokens)));
  }

  async function refreshJob() {
    refreshedAt = Date.now();
    job = await api(`/fine_tuning/jobs/${jobId}`, { signal });
    drawJob();
  }

  async function refreshCheckpoints() {
    const r = await api(`/fine_tuning/jobs/${jobId}/checkpoints?limit=50`, { signal });
    clear(ckptBox, table([
      { label: "Step", cell: (c) => fmtInt(c.step_number) },
      { label: "Model", cell: (c) => h("code", {}, c.fine_tuned_model_checkpoint) },
      { label: "Loss", cell: (c) => fmtNum(c.metrics.train_loss ?? c.metrics.valid_loss) },
      { label: "", cell: (c) => h("a", { href: `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Chat") },
    ], r.data, { empty: "No checkpoints yet." }));
  }

  function onEvent(e) {
    lastEventId = e.id;
    if (e.type === "metrics" && e.data && e.data.step != null) {
      Object.assign(latest, e.data);
      for (const c of charts) c.push(e.data.step, e.data);
      drawJob();
      // the ETA is the worker's (job.estimated_finish): fetch it while steps come, at most every 2 s
      if (Date.now() - refreshedAt > 2000 && !TERMINAL.includes(job.status)) refreshJob().catch(() => {});
    } else if (/checkpoint/i.test(e.message)) {
      refreshCheckpoints().catch(() => {});
    }
    log.append(h("li", { class: `level-${e.level}` }, h("time", {}, fmtTime(e.created_at)), " ", e.message));
    while (log.children.length > MAX_LOG) log.firstElementChild.remove();
    const box = log.parentElement;
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
  }

  async function follow() {
    while (!signal.aborted) {
      try {
        const after = lastEventId ? `&after=${encodeURIComponent(lastEventId)}` : "";
        const response = await openStream(`/fine_tuning/jobs/${jobId}/events?stream=true${after}`, { signal });
        streamStatus.textContent = "Live: following the event stream.";
        for await (const ev of readEvents(response)) {
          if (ev.event === "done") break;
          onEvent(JSON.parse(ev.data));
        }
        await Promise.all([refreshJob(), refreshCheckpoints()]);
      } catch (err) {
        if (signal.aborted) return;
        streamStatus.textContent = `Stream interrupted (${err.message}); retrying…`;
        await sleep(REFRESH_MS, signal);
        continue;
      }
      if (TERMINAL.includes(job.status)) {
        streamStatus.textContent = `The job ${job.status}.`;
        return;
      }
      streamStatus.textContent = `The job is ${job.status}; waiting for it to continue.`;
      while (!signal.aborted && job.status === "paused") {
        await sleep(REFRESH_MS, signal);
        if (!signal.aborted) await refreshJob().catch(() => {});
      }
    }
  }

  async function act(what) {
    clear(actionStatus);
    try {
      job = await api(`/fine_tuning/jobs/${jobId}/${what}`, { method: "POST" });
      drawJob();
      actionStatus.append(notice("ok", { pause: "Pause requested.", resume: "Resumed.", cancel: "Cancel requested." }[what]));
    } catch (err) {
      actionStatus.append(notice("error", err.message));
    }
  }

  drawJob();
  refreshCheckpoints().catch(() => {});
  follow();
  const poll = setInterval(() => { if (!TERMINAL.includes(job.status)) refreshJob().catch(() => {}); }, REFRESH_MS);
  return () => { abort.abort(); clearInterval(poll); charts.forEach((c) => c.destroy()); };
}

function item(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}

function chart(box, id, title, keys, yLabel) {
  const holder = h("div", { id, class: "chart-holder" });
  box.append(holder);
  return new StepChart(holder, { title, yLabel, series: keys.map(([key, label]) => ({ key, label })) });
}
