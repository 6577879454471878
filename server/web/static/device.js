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
    await act(button, `pin to v${version}`, () => api.post(`${base}/pin`, { version }));
    refresh();
  });
  const unpin = document.getElementById("unpin");
  unpin.addEventListener("click", async () => {
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
