// Small inline-SVG charts: time series lines and share bars. No dependencies.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function niceExtent(values, yMin) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (yMin !== undefined) lo = Math.min(lo, yMin);
  if (lo === hi) {
    const pad = Math.abs(hi) * 0.1 || 1;
    lo -= yMin !== undefined && lo >= yMin ? 0 : pad;
    hi += pad;
  }
  return [lo, hi];
}

function defaultFormat(v) {
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  if (a >= 0.01 || a === 0) return v.toFixed(3);
  return v.toExponential(1);
}

function timeLabel(t) {
  return new Date(t * 1000).toLocaleTimeString(undefined, { hour12: false });
}

/**
 * Draws lines into `container` (replacing its content).
 * series: [{name, points: [[x, y], ...]}]; x is epoch seconds when opts.time, else any number.
 */
export function lineChart(container, series, opts = {}) {
  const width = opts.width ?? 520;
  const height = opts.height ?? 180;
  const m = { left: 56, right: 12, top: 10, bottom: 26 };
  container.replaceChildren();
  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  if (all.length === 0) {
    const empty = document.createElement("p");
    empty.className = "muted empty";
    empty.textContent = opts.empty ?? "no data yet";
    container.append(empty);
    return;
  }
  const xs = all.map((p) => p[0]);
  const [x0, x1] = niceExtent(xs);
  const [y0, y1] = niceExtent(
    all.map((p) => p[1]),
    opts.yMin,
  );
  const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * (width - m.left - m.right);
  const sy = (y) => height - m.bottom - ((y - y0) / (y1 - y0)) * (height - m.top - m.bottom);
  const fmt = opts.yFormat ?? defaultFormat;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart-svg",
    role: "img",
    "aria-label": opts.label ?? series.map((s) => s.name).join(", "),
  });
  // Grid and y labels.
  for (let i = 0; i <= 3; i++) {
    const v = y0 + ((y1 - y0) * i) / 3;
    const y = sy(v);
    root.append(svg("line", { x1: m.left, x2: width - m.right, y1: y, y2: y, class: "grid-line" }));
    root.append(svg("text", { x: m.left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, fmt(v)));
  }
  const xl = opts.time ? timeLabel : (x) => String(Math.round(x));
  root.append(svg("text", { x: m.left, y: height - 6, class: "axis" }, xl(x0)));
  root.append(svg("text", { x: width - m.right, y: height - 6, class: "axis", "text-anchor": "end" }, xl(x1)));
  series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    // Break the line where a value is missing.
    let d = "";
    let pen = false;
    for (const [x, y] of s.points) {
      if (y === null || y === undefined) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
      pen = true;
    }
    root.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, class: "series" }));
    const valid = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (valid.length <= 60) {
      for (const [x, y] of valid) {
        const dot = svg("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: color });
        dot.append(svg("title", {}, `${s.name}: ${fmt(y)} at ${xl(x)}`));
        root.append(dot);
      }
    }
  });
  container.append(root);
  if (series.length > 1) {
    const legend = document.createElement("div");
    legend.className = "legend";
    series.forEach((s, i) => {
      const item = document.createElement("span");
      item.innerHTML = `<i style="background:${s.color ?? PALETTE[i % PALETTE.length]}"></i>`;
      item.append(document.createTextNode(s.name));
      legend.append(item);
    });
    container.append(legend);
  }
}

/** One horizontal bar split by share: items [{label, share, title}] (HTML, so labels stay crisp). */
export function shareBar(container, items, opts = {}) {
  container.replaceChildren();
  if (items.length === 0) {
    const empty = document.createElement("p");
    empty.className = "muted empty";
    empty.textContent = opts.empty ?? "no device online";
    container.append(empty);
    return;
  }
  const bar = document.createElement("div");
  bar.className = "sharebar";
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", items.map((it) => `${it.label} ${(it.share * 100).toFixed(0)}%`).join(", "));
  items.forEach((item, i) => {
    const part = document.createElement("span");
    part.style.flexGrow = String(item.share);
    part.style.background = item.color ?? PALETTE[i % PALETTE.length];
    part.dataset.label = item.label;
    part.title = item.title ?? `${item.label}: ${(item.share * 100).toFixed(1)} %`;
    part.textContent = item.share >= 0.08 ? item.label : "";
    bar.append(part);
  });
  container.append(bar);
}
