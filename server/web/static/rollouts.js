import { act, api, el, fmtTime, onLive, versionLabel } from "./app.js";
import { PALETTE, shareBar } from "./charts.js";

// GET /api/rollouts (share of the fleet per version, commands and the agents' acks); a
// server without it still gets the shares, from the live fleet summary.
let rolloutsAvailable = true;

function color(version) {
  return PALETTE[(version ?? 7) % PALETTE.length];
}

function renderShares(rows, caption) {
  const bar = el("div");
  shareBar(
    bar,
    rows.map((v) => ({ label: versionLabel(v.version), share: v.share, color: color(v.version) })),
  );
  const body = rows.map((v) =>
    el(
      "tr",
      { dataset: { version: v.version ?? "none" } },
      el("td", {}, versionLabel(v.version), v.isRelease ? el("span", { class: "badge stage-published" }, "release") : null),
      el("td", { class: "num" }, String(v.devices)),
      el("td", {}, el("div", { class: "meter" }, el("span", { style: `width:${(v.share * 100).toFixed(1)}%; background:${color(v.version)}` }))),
      el("td", { class: "num share" }, `${(v.share * 100).toFixed(1)} %`),
    ),
  );
  const head = el(
    "tr",
    {},
    el("th", {}, "Version"),
    el("th", { class: "num" }, "Devices"),
    el("th", {}, ""),
    el("th", { class: "num" }, caption),
  );
  document
    .getElementById("shares")
    .replaceChildren(bar, el("table", { class: "grid", id: "share-table" }, el("thead", {}, head), el("tbody", {}, body)));
}

function ackRows(rollouts, deviceIds) {
  const rows = [];
  for (const v of rollouts.versions ?? []) {
    for (const c of v.commands ?? []) {
      const acks = c.acks ?? {};
      const waiting = deviceIds.filter((d) => !(d in acks));
      const entries = [
        ...Object.entries(acks).map(([device, a]) => [device, a.accepted ? "accepted" : "refused", a.at, a.reason ?? ""]),
        ...waiting.map((device) => [device, c.expires_at * 1000 < Date.now() ? "expired" : "pending", null, ""]),
      ];
      for (const [device, state, at, reason] of entries) {
        rows.push(
          el(
            "tr",
            { dataset: { command: c.command_id, device } },
            el("td", {}, `${c.kind} → ${versionLabel(v.version)}`, el("div", { class: "muted" }, `by ${c.issued_by}, ${fmtTime(c.issued_at)}`)),
            el("td", {}, device),
            el("td", {}, el("span", { class: `badge ack-${state}` }, state)),
            el("td", {}, at ? fmtTime(at) : "–"),
            el("td", {}, reason),
          ),
        );
      }
    }
  }
  return rows;
}

async function update(summary) {
  const tbody = document.querySelector("#acks tbody");
  let rollouts = null;
  if (rolloutsAvailable) {
    try {
      rollouts = await api.get("/api/rollouts");
    } catch (err) {
      if (err.status === 404) rolloutsAvailable = false;
    }
  }
  if (rollouts) {
    const rows = rollouts.versions
      .filter((v) => v.share > 0 || v.is_release)
      .map((v) => ({ version: v.version, devices: v.devices_serving.length, share: v.share, isRelease: v.is_release }));
    renderShares(rows, `of ${rollouts.fleet_size} devices`);
    const acks = ackRows(rollouts, summary.rows.map((r) => r.device_id).filter((d) => !rollouts.revoked.includes(d)));
    tbody.replaceChildren(...acks);
    if (acks.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no command sent yet")));
  } else {
    renderShares(summary.versions, `of ${summary.online} online`);
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "acknowledgements are not reported by this server")));
  }
}

async function fillVersions() {
  const select = document.getElementById("rollback-version");
  if (!select) return;
  const models = await api.get("/api/models");
  const published = models.filter((m) => m.stage === "published").map((m) => m.version);
  const release = published.length ? Math.max(...published) : null;
  // Earlier released versions (newest first): published, or withdrawn by a later rollback.
  const eligible = models.filter(
    (m) => (m.stage === "published" || m.stage === "withdrawn") && release !== null && m.version < release,
  );
  const keep = select.value;
  select.replaceChildren(...eligible.map((m) => el("option", { value: m.version }, `v${m.version} (${m.stage})`)));
  if (keep && eligible.some((m) => String(m.version) === keep)) select.value = keep;
  if (eligible.length === 0) select.append(el("option", { value: "" }, "no earlier release"));
  const button = form?.querySelector("button");
  if (button) button.disabled = eligible.length === 0;
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
    fillVersions();
  });
}

fillVersions();
onLive(update);
