import { el, fmtAgo, fmtNum, fmtPct, onLive, sortRows, sortable, versionLabel } from "./app.js";
import { PALETTE, shareBar } from "./charts.js";

const table = document.getElementById("devices");
const tbody = table.querySelector("tbody");
const filter = document.getElementById("filter");
const stateSelect = document.getElementById("state");
const state = { key: "device_id", dir: 1, rows: [] };

function matches(row) {
  const want = stateSelect.value;
  if (want === "online" && !row.online) return false;
  if (want === "offline" && row.online) return false;
  const q = filter.value.trim().toLowerCase();
  if (!q) return true;
  return row.device_id.toLowerCase().includes(q) || versionLabel(row.serving_version).includes(q);
}

function stateBadge(r) {
  if (r.revoked) return el("span", { class: "badge revoked", text: "revoked" });
  return el("span", { class: `badge ${r.online ? "ok" : "off"}`, text: r.online ? "online" : "offline" });
}

function render() {
  const rows = sortRows(state.rows.filter(matches), state.key, state.dir);
  tbody.replaceChildren(
    ...rows.map((r) =>
      el(
        "tr",
        { dataset: { device: r.device_id }, class: r.online ? "" : "offline" },
        el("td", {}, el("a", { href: `/devices/${encodeURIComponent(r.device_id)}` }, r.device_id)),
        el("td", {}, stateBadge(r)),
        el("td", { title: new Date(r.last_seen * 1000).toISOString() }, fmtAgo(r.last_seen)),
        el("td", { class: "version" }, versionLabel(r.serving_version)),
        el("td", { class: "num" }, fmtNum(r.records_per_s, 1)),
        el("td", { class: "num" }, fmtPct(r.quarantine_rate)),
        el(
          "td",
          {
            class: `num ${r.drift_score > 0.25 ? "warn" : ""}`,
            title: r.drift_feature ? `moved most: ${r.drift_feature} (${fmtNum(r.drift_shift, 2)} sd)` : null,
          },
          fmtNum(r.drift_score, 3),
          r.drift_feature ? el("span", { class: "muted drift-feature" }, ` ${r.drift_feature}`) : null,
        ),
        el("td", { class: "num" }, r.scoring_latency_ms === null ? "–" : fmtNum(r.scoring_latency_ms, 4)),
      ),
    ),
  );
  if (rows.length === 0) {
    tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no device matches")));
  }
}

function update(summary) {
  state.rows = summary.rows;
  document.getElementById("s-online").textContent = `${summary.online} / ${summary.devices}`;
  document.getElementById("s-latest").textContent =
    summary.latest_published === null ? "–" : `${summary.on_latest} on ${versionLabel(summary.latest_published)}`;
  document.getElementById("s-rps").textContent = fmtNum(summary.records_per_s, 1);
  shareBar(
    document.getElementById("versions"),
    summary.versions.map((v) => ({
      label: versionLabel(v.version),
      share: v.share,
      color: PALETTE[(v.version ?? 7) % PALETTE.length],
      title: `${versionLabel(v.version)}: ${v.devices} device(s), ${(v.share * 100).toFixed(1)} %`,
    })),
  );
  render();
}

sortable(table, state, render);
filter.addEventListener("input", render);
stateSelect.addEventListener("change", render);
onLive(update);
