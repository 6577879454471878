import { act, api, el, fmtDuration, fmtTime, onLive, versionLabel } from "./app.js";
import { lineChart } from "./charts.js";

let selected = null;
let lastSeen = "";

async function showRun(runId) {
  selected = runId;
  const run = await api.get(`/api/runs/${encodeURIComponent(runId)}`);
  document.getElementById("run-detail").hidden = false;
  document.getElementById("run-id").textContent = `${run.run_id} (${run.status})`;
  const rounds = run.round_metrics;
  const metricKeys = [...new Set(rounds.flatMap((r) => Object.keys(r.metrics)))];
  const lossKeys = metricKeys.filter((k) => k.includes("loss"));
  lineChart(
    document.getElementById("c-loss"),
    lossKeys.map((k) => ({ name: k, points: rounds.map((r) => [r.round, r.metrics[k] ?? null]) })),
    { empty: "no loss reported" },
  );
  const auprcKeys = metricKeys.filter((k) => k.includes("auprc"));
  lineChart(
    document.getElementById("c-auprc"),
    auprcKeys.map((k) => ({ name: k, points: rounds.map((r) => [r.round, r.metrics[k] ?? null]) })),
    { empty: "no AUPRC reported" },
  );
  lineChart(
    document.getElementById("c-part"),
    [
      { name: "participants", points: rounds.map((r) => [r.round, r.participants]) },
      { name: "failures", points: rounds.map((r) => [r.round, r.failures]) },
    ],
    { yMin: 0, yFormat: (v) => v.toFixed(0) },
  );
  lineChart(document.getElementById("c-time"), [{ name: "round time", points: rounds.map((r) => [r.round, r.duration_s]) }], {
    yMin: 0,
  });
  for (const tr of document.querySelectorAll("#runs tbody tr")) tr.classList.toggle("selected", tr.dataset.run === runId);
}

async function load() {
  const runs = await api.get("/api/runs");
  const tbody = document.querySelector("#runs tbody");
  tbody.replaceChildren(
    ...runs.map((r) => {
      const tr = el(
        "tr",
        { dataset: { run: r.run_id }, class: "clickable" },
        el("td", {}, el("a", { href: `#${r.run_id}` }, r.run_id)),
        el("td", {}, el("span", { class: `badge run-${r.status}` }, r.status)),
        el("td", { class: "num" }, String(r.rounds)),
        el("td", {}, r.strategy ?? "–"),
        el("td", {}, fmtTime(r.started)),
        el("td", {}, r.finished ? fmtDuration(r.finished - r.started) : "running"),
        el("td", {}, r.published_version === null ? "–" : versionLabel(r.published_version)),
        el("td", { class: "error" }, r.error ?? ""),
      );
      tr.addEventListener("click", (ev) => {
        ev.preventDefault();
        history.replaceState(null, "", `#${r.run_id}`);
        showRun(r.run_id);
      });
      return tr;
    }),
  );
  if (runs.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no training run yet")));
  const wanted = decodeURIComponent(location.hash.slice(1)) || selected || (runs[0] && runs[0].run_id);
  if (wanted && runs.some((r) => r.run_id === wanted)) await showRun(wanted);
}

const form = document.getElementById("start-run");
if (form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const body = {
      rounds: Number(data.get("rounds")),
      strategy: data.get("strategy"),
      min_agents: Number(data.get("min_agents")),
    };
    await act(form.querySelector("button"), "start run", () => api.post("/api/runs", body));
    load();
  });
}

onLive((summary) => {
  // Reload while a run is going (new rounds) and when the set of runs changes.
  const key = `${summary.runs.count}/${summary.runs.running}`;
  if (key !== lastSeen || summary.runs.running > 0) {
    lastSeen = key;
    load();
  }
});
load();
