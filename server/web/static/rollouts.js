import { act, api, el, fmtTime, onLive, versionLabel } from "./app.js";
import { PALETTE, shareBar } from "./charts.js";

let rolloutsAvailable = true;

function renderShares(versions, total) {
  const box = document.getElementById("shares");
  const bar = el("div");
  shareBar(
    bar,
    versions.map((v) => ({ label: versionLabel(v.version), share: v.share, color: PALETTE[(v.version ?? 7) % PALETTE.length] })),
  );
  const rows = versions.map((v) =>
    el(
      "tr",
      { dataset: { version: v.version ?? "none" } },
      el("td", {}, versionLabel(v.version)),
      el("td", { class: "num" }, String(v.devices)),
      el("td", {}, el("div", { class: "meter" }, el("span", { style: `width:${(v.share * 100).toFixed(1)}%` }))),
      el("td", { class: "num share" }, `${(v.share * 100).toFixed(1)} %`),
    ),
  );
  box.replaceChildren(
    bar,
    el(
      "table",
      { class: "grid", id: "share-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", { class: "num" }, "Devices"), el("th", {}, ""), el("th", { class: "num" }, `of ${total} online`))),
      el("tbody", {}, rows),
    ),
  );
}

function ackRows(rollouts) {
  const rows = [];
  for (const r of rollouts) {
    for (const a of r.acks ?? []) {
      rows.push(
        el(
          "tr",
          {},
          el("td", {}, versionLabel(r.version)),
          el("td", {}, a.device_id),
          el("td", {}, el("span", { class: `badge ack-${a.state ?? a.status}` }, a.state ?? a.status ?? "")),
          el("td", {}, fmtTime(a.at)),
          el("td", {}, a.detail ?? a.reason ?? ""),
        ),
      );
    }
  }
  return rows;
}

async function update(summary) {
  renderShares(summary.versions, summary.online);
  const tbody = document.querySelector("#acks tbody");
  if (rolloutsAvailable) {
    try {
      const rollouts = await api.get("/api/rollouts");
      const rows = ackRows(Array.isArray(rollouts) ? rollouts : rollouts.versions ?? []);
      tbody.replaceChildren(...rows);
      if (rows.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no acknowledgement yet")));
    } catch (err) {
      if (err.status === 404) rolloutsAvailable = false;
    }
  }
  if (!rolloutsAvailable) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "acknowledgements are not reported by this server")));
  }
}

async function fillVersions() {
  const select = document.getElementById("rollback-version");
  if (!select) return;
  const models = await api.get("/api/models");
  const published = models.filter((m) => m.stage === "published");
  const keep = select.value;
  select.replaceChildren(...published.map((m) => el("option", { value: m.version }, `v${m.version}`)));
  if (keep) select.value = keep;
  else if (published.length > 1) select.value = String(published[1].version);
}

const form = document.getElementById("rollback");
if (form) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const version = Number(new FormData(form).get("version"));
    if (!confirm(`Roll the whole fleet back to v${version}?`)) return;
    await act(form.querySelector("button"), `roll back to v${version}`, () =>
      api.post("/api/fleet/rollback", { version }),
    );
  });
}

fillVersions();
onLive(update);
