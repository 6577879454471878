import { act, api, el, fmtAgo, fmtNum, fmtPct, fmtTime, onLive, toast, versionLabel } from "./app.js";
import { lineChart } from "./charts.js";

const deviceId = document.getElementById("device").dataset.device;
const base = `/api/devices/${encodeURIComponent(deviceId)}`;

function fact(name, value) {
  return [el("dt", {}, name), el("dd", {}, value)];
}

async function refresh() {
  let device;
  try {
    device = await api.get(base);
  } catch (err) {
    document.getElementById("d-state").textContent = err.status === 404 ? "unknown device" : "error";
    return;
  }
  const badge = document.getElementById("d-state");
  badge.textContent = device.revoked ? "revoked" : device.online ? "online" : "offline";
  badge.className = `badge ${device.revoked ? "revoked" : device.online ? "ok" : "off"}`;
  if (revoke) revoke.hidden = Boolean(device.revoked);
  const c = device.counters || {};
  document
    .getElementById("facts")
    .replaceChildren(
      ...fact("Serving", versionLabel(device.serving_version)),
      ...fact("Pinned", device.pinned_version == null ? "no: follows the release" : versionLabel(device.pinned_version)),
      ...fact("Health", device.health),
      ...fact("Last seen", `${fmtAgo(device.last_seen)} (${fmtTime(device.last_seen)})`),
      ...fact("Ingested", fmtNum(c.ingested, 0)),
      ...fact("Quarantined", fmtNum(c.quarantined, 0)),
      ...fact("Scored", fmtNum(c.scored, 0)),
      ...fact("Labelled", fmtNum(c.labelled, 0)),
      ...fact("Queue depth", fmtNum(device.queue_depth, 0)),
      ...fact("Last rejection", device.last_rejection ? device.last_rejection.reason : "none"),
    );
  await refreshConfig();
  const telemetry = await api.get(`${base}/telemetry`);
  const pts = telemetry.points;
  const line = (key) => pts.map((p) => [p.at, p[key]]);
  lineChart(document.getElementById("c-rps"), [{ name: "records/s", points: line("records_per_s") }], {
    time: true,
    yMin: 0,
  });
  lineChart(document.getElementById("c-qr"), [{ name: "quarantine rate", points: line("quarantine_rate") }], {
    time: true,
    yMin: 0,
    yFormat: (v) => `${(v * 100).toFixed(1)}%`,
  });
  lineChart(document.getElementById("c-drift"), [{ name: "drift", points: line("drift_score") }], {
    time: true,
    yMin: 0,
  });
  lineChart(document.getElementById("c-lat"), [{ name: "ms/record", points: line("scoring_latency_ms") }], {
    time: true,
    yMin: 0,
  });
  const entries = await api.get(`${base}/quarantine`);
  const tbody = document.querySelector("#quarantine tbody");
  tbody.replaceChildren(
    ...entries.map((q) =>
      el(
        "tr",
        {},
        el("td", {}, fmtTime(q.at)),
        el("td", {}, q.record_id ?? "(whole payload)"),
        el("td", {}, q.reason),
        el("td", {}, el("code", {}, q.excerpt)),
      ),
    ),
  );
  if (entries.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "nothing quarantined")));
}

function shownSettings(settings) {
  const names = Object.keys(settings).sort();
  if (names.length === 0) return "its local settings";
  return names.map((name) => `${name} = ${JSON.stringify(settings[name])}`).join(", ");
}

// Remote settings: what the device runs now (the newest config it applied) and what was sent.
async function refreshConfig() {
  const view = await api.get(`${base}/config`);
  const effect = view.in_effect;
  document
    .getElementById("remote-facts")
    .replaceChildren(
      ...fact("In effect", effect == null ? "its local settings (no remote settings applied)" : shownSettings(effect.settings)),
      ...fact("Since", effect == null ? "—" : `${fmtTime(effect.answered_at)} (${effect.command_id}, by ${effect.issued_by})`),
    );
  const settable = document.getElementById("config-settable");
  if (settable) settable.textContent = `Settable: ${view.settable.join(", ")}`;
  const tbody = document.querySelector("#configs tbody");
  tbody.replaceChildren(
    ...view.history.map((c) =>
      el(
        "tr",
        { "data-command": c.command_id },
        el("td", {}, fmtTime(c.issued_at)),
        el("td", {}, el("code", {}, shownSettings(c.settings))),
        el("td", {}, c.issued_by),
        el("td", { class: `state ${c.state}` }, c.state),
        el("td", {}, c.reason ?? ""),
      ),
    ),
  );
  if (view.history.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "none sent")));
}

const configForm = document.getElementById("config");
if (configForm) {
  const send = async (button, settings, what) => {
    await act(button, what, () => api.post(`${base}/config`, { settings }));
    refresh();
  };
  configForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = configForm.querySelector('button[data-action="configure"]');
    let settings;
    try {
      settings = JSON.parse(document.getElementById("config-settings").value || "{}");
    } catch (err) {
      toast(`configure failed: not JSON (${err.message})`, true);
      return;
    }
    if (settings === null || typeof settings !== "object" || Array.isArray(settings)) {
      toast('configure failed: give a JSON object, e.g. {"heartbeat_s": 5}', true);
      return;
    }
    if (!confirm(`Send ${shownSettings(settings)} to ${deviceId}? It restarts to apply them.`)) return;
    await send(button, settings, "configure");
  });
  const local = document.getElementById("config-local");
  local.addEventListener("click", async () => {
    if (!confirm(`Return ${deviceId} to its local settings? It restarts to apply them.`)) return;
    await send(local, {}, "back to local settings");
  });
}

const revoke = document.getElementById("revoke");
if (revoke) {
  revoke.addEventListener("click", async () => {
    if (!confirm(`Revoke ${deviceId}? It will no longer be trusted by the server.`)) return;
    await act(revoke, `revoke ${deviceId}`, () => api.post(`${base}/revoke`));
    refresh();
  });
}

// Pin: the device serves this released version and ignores releases until unpinned.
const pinForm = document.getElementById("pin");
if (pinForm) {
  pinForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const version = Number.parseInt(document.getElementById("pin-version").value, 10);
    const button = pinForm.querySelector('button[data-action="pin"]');
    if (!confirm(`Pin ${deviceId} to v${version}? It ignores releases until unpinned.`)) return;
    await act(button, `pin to v${version}`, () => api.post(`${base}/pin`, { version }));
    refresh();
  });
  const unpin = document.getElementById("unpin");
  unpin.addEventListener("click", async () => {
    if (!confirm(`Unpin ${deviceId}? It follows the fleet's release again.`)) return;
    await act(unpin, "unpin", () => api.post(`${base}/unpin`));
    refresh();
  });
}

let busy = false;
let last = 0;
// Live events come every couple of seconds; the charts need no more than one refresh per 5 s.
async function tick() {
  if (busy || Date.now() - last < 5000) return;
  busy = true;
  last = Date.now();
  try {
    await refresh();
  } catch (err) {
    toast(`refresh failed: ${err.message}`, true);
  } finally {
    busy = false;
  }
}
tick();
onLive(tick);
