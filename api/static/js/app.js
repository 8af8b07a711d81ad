// The console shell: sign-in with an API key (checked against GET /v1/models, then kept in
// sessionStorage), navigation and hash routing to the pages. Each page module exports
// render(root, params) and may return a cleanup function that stops its streams and timers.

import { api, session } from "./api.js";
import { clear, field, h, notice } from "./dom.js";

const ROUTES = [
  [/^#\/data(?:\/([\w-]+))?$/, () => import("./pages/data.js"), "Data"],
  [/^#\/train(?:\?(.*))?$/, () => import("./pages/train.js"), "Train"],
  [/^#\/jobs$/, () => import("./pages/jobs.js"), "Jobs"],
  [/^#\/jobs\/([\w-]+)$/, () => import("./pages/job.js"), "Jobs"],
  [/^#\/pipelines\/([\w-]+)$/, () => import("./pages/pipeline.js"), "Jobs"],
  [/^#\/models$/, () => import("./pages/models.js"), "Models"],
  [/^#\/playground(?:\?(.*))?$/, () => import("./pages/playground.js"), "Playground"],
  [/^#\/evals(?:\/([\w-]+)(?:\/runs\/([\w-]+))?)?(?:\?(.*))?$/, () => import("./pages/evals.js"), "Evals"],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");
let cleanup = null;
let generation = 0;

function signInView(message) {
  nav.hidden = true;
  signOutButton.hidden = true;
  const input = h("input", { type: "password", name: "api-key", autocomplete: "off", required: true,
    placeholder: "cf-…", spellcheck: "false" });
  const status = h("div", { "aria-live": "polite" }, message ? notice("error", message) : null);
  const form = h("form", { class: "card narrow", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Enter an API key of your project. It stays in this browser tab only (session storage)."),
    field("API key", input, "Printed by `chatforge serve`, or made with `chatforge keys create --project NAME`."),
    h("button", { type: "submit" }, "Sign in"),
    status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    clear(status, h("p", { class: "muted" }, "Checking the key…"));
    try {
      await api("/models", { key });
    } catch (err) {
      clear(status, notice("error", err.status === 401 ? "That key was not accepted." : err.message));
      return;
    }
    session.signIn(key);
    if (!location.hash || location.hash === "#/" || location.hash === "#") location.hash = "#/data";
    else route();
  });
  clear(main, form);
  input.focus();
}

async function route() {
  const mine = ++generation;
  if (cleanup) { try { cleanup(); } catch { /* page already gone */ } cleanup = null; }
  if (!session.key) { signInView(); return; }
  nav.hidden = false;
  signOutButton.hidden = false;
  const hash = location.hash || "#/data";
  const match = ROUTES.map(([re, load, section]) => [hash.match(re), load, section]).find(([m]) => m);
  if (!match) { location.hash = "#/data"; return; }
  const [m, load, section] = match;
  for (const a of nav.querySelectorAll("a")) {
    if (a.textContent === section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const page = await load();
  if (mine !== generation) return; // navigated away while the module loaded
  const root = h("div", { class: "page", id: `page-${section.toLowerCase()}` });
  clear(main, root);
  document.title = `${section} · ChatForge`;
  try {
    const stop = (await page.render(root, m.slice(1))) || null;
    if (mine !== generation) { if (stop) stop(); return; }
    cleanup = stop;
  } catch (err) {
    if (err.status === 401) { session.signOut(); signInView("Your key is no longer accepted; sign in again."); return; }
    root.append(notice("error", err.message));
  }
}

signOutButton.addEventListener("click", () => {
  session.signOut();
  location.hash = "#/data";
  route();
});
window.addEventListener("hashchange", route);
route();
