import { api, el, fmtTime, onLive, toast } from "./app.js";

// GET /api/audit pages newest first: {entries, next_before}.
const filter = document.getElementById("filter");
const older = document.getElementById("older");
let entries = [];
let nextBefore = null;
let lastId = -1;

function render() {
  const q = filter.value.trim().toLowerCase();
  const rows = entries.filter((e) => !q || e.actor.toLowerCase().includes(q) || e.action.toLowerCase().includes(q));
  const tbody = document.querySelector("#audit tbody");
  tbody.replaceChildren(
    ...rows.map((e) =>
      el(
        "tr",
        { dataset: { id: e.id } },
        el("td", {}, fmtTime(e.at)),
        el("td", {}, e.actor),
        el("td", {}, el("b", {}, e.action)),
        el("td", {}, el("code", {}, JSON.stringify(e.detail))),
      ),
    ),
  );
  if (rows.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no entry")));
  older.hidden = nextBefore === null;
}

async function load() {
  try {
    const page = await api.get("/api/audit?limit=100");
    // Keep older pages already loaded below the fresh first page.
    const fresh = new Set(page.entries.map((e) => e.id));
    const tail = entries.filter((e) => !fresh.has(e.id) && e.id < Math.min(...fresh));
    entries = [...page.entries, ...tail];
    if (tail.length === 0) nextBefore = page.next_before;
  } catch (err) {
    toast(`audit log: ${err.message}`, true);
  }
  render();
}

older.addEventListener("click", async () => {
  if (nextBefore === null) return;
  const page = await api.get(`/api/audit?limit=100&before=${nextBefore}`);
  entries = [...entries, ...page.entries];
  nextBefore = page.next_before;
  render();
});
filter.addEventListener("input", render);
onLive((summary) => {
  if (summary.last_audit_id !== lastId) {
    lastId = summary.last_audit_id;
    load();
  }
});
