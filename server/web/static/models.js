import { act, api, canAct, el, fmtNum, fmtTime, onLive, versionLabel } from "./app.js";

const tbody = document.querySelector("#models tbody");
const selA = document.getElementById("cmp-a");
const selB = document.getElementById("cmp-b");
let models = [];
let serving = new Map();

function actions(m, latestPublished) {
  if (!canAct) return null;
  const cell = el("td", { class: "actions" });
  if (m.stage === "candidate") {
    const b = el("button", { type: "button", dataset: { action: "promote", version: m.version } }, "Promote");
    b.addEventListener("click", async () => {
      if (!confirm(`Promote v${m.version} and publish it to the fleet?`)) return;
      await act(b, `promote v${m.version}`, () => api.post(`/api/models/${m.version}/promote`));
      load();
    });
    cell.append(b);
  }
  // A rollback goes to an earlier released version: published, or withdrawn by a later rollback.
  if ((m.stage === "published" || m.stage === "withdrawn") && latestPublished !== null && m.version < latestPublished) {
    const b = el(
      "button",
      { type: "button", class: "danger", dataset: { action: "rollback", version: m.version } },
      `Roll back to v${m.version}`,
    );
    b.addEventListener("click", async () => {
      if (!confirm(`Roll the whole fleet back to v${m.version}?`)) return;
      await act(b, `roll back to v${m.version}`, () => api.post("/api/fleet/rollback", { version: m.version }));
      load();
    });
    cell.append(b);
  }
  return cell;
}

function render() {
  const published = models.filter((m) => m.stage === "published").map((m) => m.version);
  const latestPublished = published.length ? Math.max(...published) : null;
  tbody.replaceChildren(
    ...models.map((m) =>
      el(
        "tr",
        { dataset: { version: m.version } },
        el("td", {}, el("b", {}, `v${m.version}`)),
        el("td", {}, el("span", { class: `badge stage-${m.stage}` }, m.stage)),
        el("td", {}, m.parent_version === null ? "root" : `from v${m.parent_version}`),
        el("td", {}, m.training_run_id ?? "–"),
        el("td", {}, fmtTime(m.created)),
        el("td", { class: "num" }, fmtNum(m.metrics.auprc, 4)),
        el("td", { class: "num" }, fmtNum(m.metrics.roc_auc, 4)),
        el("td", { title: m.sha256 }, el("code", {}, m.sha256.slice(0, 12))),
        el("td", {}, el("code", {}, m.signer)),
        el("td", {}, String(serving.get(m.version) ?? 0)),
        actions(m, latestPublished),
      ),
    ),
  );
  const options = (sel, fallback) => {
    const keep = sel.value;
    sel.replaceChildren(...models.map((m) => el("option", { value: m.version }, `v${m.version} (${m.stage})`)));
    sel.value = keep && models.some((m) => String(m.version) === keep) ? keep : fallback;
  };
  if (models.length) {
    options(selA, String(models[Math.min(1, models.length - 1)].version));
    options(selB, String(models[0].version));
  }
}

async function compare() {
  const box = document.getElementById("compare");
  if (!selA.value || !selB.value) {
    box.replaceChildren(el("p", { class: "muted" }, "no model yet"));
    return;
  }
  const c = await api.get(`/api/models/compare?a=${selA.value}&b=${selB.value}`);
  const head = el("tr", {}, el("th", {}, ""), el("th", {}, `v${c.a}`), el("th", {}, `v${c.b}`), el("th", {}, "b − a"));
  const rows = c.metrics.map((m) =>
    el(
      "tr",
      {},
      el("td", {}, m.name),
      el("td", { class: "num" }, fmtNum(m.a, 4)),
      el("td", { class: "num" }, fmtNum(m.b, 4)),
      el("td", { class: `num ${m.delta > 0 ? "up" : m.delta < 0 ? "down" : ""}` }, m.delta === null ? "–" : (m.delta > 0 ? "+" : "") + fmtNum(m.delta, 4)),
    ),
  );
  const fmtField = (name, v) => (name === "created" ? fmtTime(v) : v === null ? "–" : String(v));
  const fields = c.fields.map((f) =>
    el(
      "tr",
      {},
      el("td", {}, f.name),
      el("td", {}, fmtField(f.name, f.a)),
      el("td", {}, fmtField(f.name, f.b)),
      el("td", {}, f.a === f.b ? "same" : ""),
    ),
  );
  const lineage = el(
    "p",
    { class: "muted" },
    `Lineage: v${c.a} ← ${c.lineage.a.slice(1).map(versionLabel).join(" ← ") || "root"}; `,
    `v${c.b} ← ${c.lineage.b.slice(1).map(versionLabel).join(" ← ") || "root"}; `,
    `common ancestor: ${c.lineage.common_ancestor === null ? "none" : versionLabel(c.lineage.common_ancestor)}`,
  );
  box.replaceChildren(el("table", { class: "grid compare" }, el("thead", {}, head), el("tbody", {}, rows, fields)), lineage);
}

async function load() {
  models = await api.get("/api/models");
  render();
  await compare();
}

selA.addEventListener("change", compare);
selB.addEventListener("change", compare);
let lastModels = -1;
let lastStages = "";
onLive((summary) => {
  serving = new Map(summary.versions.map((v) => [v.version, v.devices]));
  const stages = summary.latest_published;
  if (summary.models !== lastModels || stages !== lastStages) {
    lastModels = summary.models;
    lastStages = stages;
    load();
  } else {
    render();
  }
});
load();
