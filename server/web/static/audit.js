import { api, el, fmtTime, onLive } from "./app.js";

const filter = document.getElementById("filter");
let entries = [];
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
}

async function load() {
  try {
    entries = await api.get("/api/audit?limit=200");
  } catch (err) {
    entries = [];
  }
  render();
}

filter.addEventListener("input", render);
onLive((summary) => {
  if (summary.last_audit_id !== lastId) {
    lastId = summary.last_audit_id;
    load();
  }
});
