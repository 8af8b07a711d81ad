// Charts of the console, drawn by the vendored uPlot (api/static/vendor, MIT): live step series (loss,
// learning rate, method metrics) that grow point by point, and the token-length histogram. Each chart's
// element carries data-points = how many x values it holds, which the browser tests read.

import uPlot from "../vendor/uPlot.esm.js";
import { h } from "./dom.js";

const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];

function sizeOf(el, height) {
  return { width: Math.max(260, el.clientWidth || 600), height };
}

function keepSized(el, plot, height) {
  const ro = new ResizeObserver(() => plot.setSize(sizeOf(el, height)));
  ro.observe(el);
  return () => ro.disconnect();
}

/**
 * A chart of values per step. series: [{key, label}]. push(step, values) adds or updates a step; values
 * missing for a step stay gaps (validation loss comes every few steps).
 */
export class StepChart {
  constructor(container, { title, series, height = 220, yLabel = "", log = false }) {
    this.keys = series.map((s) => s.key);
    this.steps = [];
    this.values = this.keys.map(() => []);
    this.el = h("div", { class: "chart", role: "img", "aria-label": title, dataset: { points: "0" } });
    this.pending = false;
    container.append(h("figure", { class: "chart-figure" }, h("figcaption", {}, title), this.el));
    const opts = {
      ...sizeOf(this.el, height),
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [{ label: "step", incrs: STEP_INCRS }, { label: yLabel, size: 70, values: (u, ticks) => ticks.map(fmtTick) }],
      series: [{ label: "step" }, ...series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { show: true, size: 4 }, value: (u, v) => (v == null ? "–" : fmtTick(v)),
      }))],
      legend: { live: true },
    };
    this.plot = new uPlot(opts, [[], ...this.keys.map(() => [])], this.el);
    this.stopSizing = keepSized(this.el, this.plot, height);
  }

  /** Returns true when any of this chart's keys was in `values`. */
  push(step, values) {
    if (!this.keys.some((k) => values[k] != null)) return false;
    let i = this.steps.indexOf(step);
    if (i < 0) {
      // steps normally arrive in order; a resumed job may repeat one, so insert sorted
      i = this.steps.findIndex((s) => s > step);
      if (i < 0) i = this.steps.length;
      this.steps.splice(i, 0, step);
      this.values.forEach((arr) => arr.splice(i, 0, null));
    }
    this.keys.forEach((k, j) => { if (values[k] != null) this.values[j][i] = values[k]; });
    this.schedule();
    return true;
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.plot.setData([this.steps.slice(), ...this.values.map((a) => a.slice())]);
      this.el.dataset.points = String(this.steps.length);
    });
  }

  get count() { return this.steps.length; }

  destroy() {
    this.stopSizing();
    this.plot.destroy();
  }
}

/** Bars of a histogram {edges: [n+1], counts: [n]}; x = bin start. */
export function histogram(container, { title, edges, counts, height = 200 }) {
  const el = h("div", { class: "chart", role: "img", "aria-label": title, dataset: { points: String(counts.length) } });
  container.append(h("figure", { class: "chart-figure" }, h("figcaption", {}, title), el));
  const mids = counts.map((_, i) => (edges[i] + edges[i + 1]) / 2);
  const width = edges.length > 1 ? edges[1] - edges[0] : 1;
  const opts = {
    ...sizeOf(el, height),
    scales: { x: { time: false, range: [edges[0], edges[edges.length - 1]] } },
    axes: [{ label: "tokens per example" }, { label: "examples" }],
    series: [{ label: "tokens", value: (u, v) => (v == null ? "–" : `${Math.round(v - width / 2)}–${Math.round(v + width / 2)}`) },
      { label: "examples", fill: "rgba(37,99,235,0.35)", stroke: COLORS[0], width: 1,
        paths: uPlot.paths.bars({ size: [0.92, Infinity], align: 0 }), points: { show: false } }],
    legend: { live: true },
  };
  const plot = new uPlot(opts, [mids, counts], el);
  const stop = keepSized(el, plot, height);
  return { destroy() { stop(); plot.destroy(); } };
}

function fmtTick(v) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return Number(v.toPrecision(4)).toString();
}
