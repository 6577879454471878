// Shared helpers of every dashboard page: the JSON API (with the CSRF header), live
// updates over server-sent events, formatting, sortable tables and a toast.

// The page shell carries the session's CSRF token; /api/auth/me is the fallback.
let csrfToken = document.querySelector('meta[name="csrf-token"]')?.content || null;

export const role = document.body.dataset.role || "viewer";
export const canAct = role === "operator" || role === "admin";

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") {
    if (csrfToken === null) await loadMe();
    if (csrfToken) headers["X-CSRF-Token"] = csrfToken;
  }
  const resp = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401 && !location.pathname.startsWith("/login")) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, "signed out");
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    const detail = data && typeof data === "object" ? JSON.stringify(data.detail ?? data) : String(data);
    throw new ApiError(resp.status, detail);
  }
  return data;
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body = {}) => request("POST", path, body),
};

export async function loadMe() {
  try {
    const me = await request("GET", "/api/auth/me");
    csrfToken = me.csrf_token || "";
    return me;
  } catch {
    csrfToken = "";
    return null;
  }
}

// ---- live updates -------------------------------------------------------------------

const liveListeners = [];
let source = null;

export function onLive(fn) {
  liveListeners.push(fn);
  if (source === null) startLive();
}

function setLive(text, ok) {
  const el = document.getElementById("live");
  if (!el) return;
  el.textContent = text;
  el.classList.toggle("on", ok);
}

function startLive() {
  source = new EventSource("/api/events");
  source.addEventListener("open", () => setLive("live", true));
  source.addEventListener("error", () => {
    setLive("reconnecting…", false);
    // A dropped stream is retried by the browser; a refused one (401: session over, or a
    // server restart) is closed for good: ask who we are (401 leads to the login page), then reopen.
    if (source.readyState === EventSource.CLOSED) {
      source = null;
      setTimeout(async () => {
        await loadMe();
        if (source === null) startLive();
      }, 3000);
    }
  });
  source.addEventListener("fleet", (ev) => {
    setLive("live", true);
    const summary = JSON.parse(ev.data);
    for (const fn of liveListeners) {
      try {
        fn(summary);
      } catch (err) {
        console.error(err);
      }
    }
  });
}

// ---- formatting -----------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmtNum(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtPct(x, digits = 2) {
  return x === null || x === undefined ? "–" : `${(x * 100).toFixed(digits)} %`;
}

export function fmtTime(epoch) {
  if (!epoch) return "–";
  const d = new Date(epoch * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}

export function fmtAgo(epoch) {
  if (!epoch) return "never";
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  return `${(seconds / 60).toFixed(1)} min`;
}

export function versionLabel(v) {
  return v === null || v === undefined ? "none" : `v${v}`;
}

// ---- sortable tables ------------------------------------------------------------------

// Makes the <th data-key> headers of `table` sort `state.rows`; calls render() after.
export function sortable(table, state, render) {
  for (const th of table.querySelectorAll("th[data-key]")) {
    th.tabIndex = 0;
    const activate = () => {
      const key = th.dataset.key;
      state.dir = state.key === key ? -state.dir : 1;
      state.key = key;
      for (const other of table.querySelectorAll("th[data-key]")) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
      render();
    };
    th.addEventListener("click", activate);
    th.addEventListener("keydown", (e) => e.key === "Enter" && activate());
  }
}

export function sortRows(rows, key, dir) {
  if (!key) return rows;
  return [...rows].sort((a, b) => {
    const x = a[key];
    const y = b[key];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * dir;
  });
}

// ---- feedback -------------------------------------------------------------------------

export function toast(message, isError = false) {
  const box = document.getElementById("toast");
  if (!box) return;
  box.textContent = message;
  box.className = isError ? "show error" : "show";
  clearTimeout(box._timer);
  box._timer = setTimeout(() => (box.className = ""), 5000);
}

// Runs an action (a POST), reports the outcome, and disables the button meanwhile.
export async function act(button, what, fn) {
  if (button) button.disabled = true;
  try {
    const result = await fn();
    toast(`${what}: done`);
    return result;
  } catch (err) {
    toast(`${what} failed: ${err.detail ?? err.message}`, true);
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- header ---------------------------------------------------------------------------

const logout = document.getElementById("logout");
if (logout) {
  logout.addEventListener("click", async () => {
    try {
      await api.post("/api/auth/logout");
    } finally {
      location.assign("/login");
    }
  });
}
