// The TaskManager dashboard: renders the state the dispatcher pushes over /events.
// Everything from the server goes into the page as text (textContent), never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function when(t) {
  if (t === null || t === undefined) return "";
  const d = new Date(t * 1000);
  return d.toLocaleString();
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 7200) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function stateCell(state, suspended) {
  return el("td", { class: "state state-" + state }, state + (suspended ? " (suspended)" : ""));
}

function renderHosts(hosts) {
  fill(document.querySelector("#hosts tbody"), hosts.map((h) => {
    const tr = el("tr", { "data-host": h.name });
    tr.append(
      el("td", {}, h.name),
      el("td", {}, h.used + " / " + h.slots),
      el("td", {}, h.load === null ? "" : h.load.toFixed(2)),
      el("td", {}, h.executors + (h.executor_users.length ? " (" + h.executor_users.join(", ") + ")" : "")),
      el("td", {}, h.active ? "yes" : "no"),
    );
    return tr;
  }));
}

function renderQueue(queue) {
  fill(document.querySelector("#queue tbody"), queue.map((q) => {
    const tr = el("tr", { "data-user": q.user });
    tr.append(el("td", {}, q.user), el("td", {}, q.waiting), el("td", {}, q.pending),
      el("td", {}, q.running), el("td", {}, q.lost));
    return tr;
  }));
}

function renderGroups(groups) {
  document.getElementById("no-groups").hidden = groups.length > 0;
  document.getElementById("groups").hidden = groups.length === 0;
  fill(document.querySelector("#groups tbody"), groups.map((g) => {
    const tr = el("tr", { "data-group": g.group });
    const bar = el("div", { class: "bar" });
    const inner = el("div", {});
    inner.style.width = (g.total ? (100 * g.done) / g.total : 0).toFixed(1) + "%";
    bar.append(inner);
    const td = el("td", {});
    td.append(bar);
    const states = Object.entries(g.counts).map(([s, n]) => s + " " + n).join(", ");
    tr.append(el("td", {}, g.group), td, el("td", {}, g.done + " / " + g.total), el("td", {}, states));
    return tr;
  }));
}

function renderJobs(jobs, showUser) {
  document.getElementById("no-jobs").hidden = jobs.length > 0;
  document.getElementById("jobs").hidden = jobs.length === 0;
  fill(document.querySelector("#jobs tbody"), jobs.map((j) => {
    const tr = el("tr", { class: "job", "data-job-id": String(j.id), "data-state": j.state });
    tr.append(
      el("td", {}, j.id),
      el("td", {}, j.user),
      stateCell(j.state, j.suspended),
      el("td", {}, j.host || ""),
      el("td", { class: "command" }, j.command),
      el("td", {}, j.group),
      el("td", {}, when(j.submitted_at)),
    );
    tr.addEventListener("click", () => showJob(j.id));
    return tr;
  }));
  document.querySelectorAll("#jobs th:nth-child(2), #jobs td:nth-child(2)").forEach((c) => {
    c.hidden = !showUser;
  });
}

function axes(chart, top, label) {
  chart.append(
    svg("line", { class: "axis", x1: 40, y1: 120, x2: 600, y2: 120 }),
    svg("line", { class: "axis", x1: 40, y1: 10, x2: 40, y2: 120 }),
    svg("text", { x: 2, y: 16 }, label(top)),
    svg("text", { x: 2, y: 122 }, label(0)),
    svg("text", { x: 42, y: 136 }, "-60 min"),
    svg("text", { x: 575, y: 136 }, "now"),
  );
}

function renderThroughput(minutes) {
  const chart = document.getElementById("throughput");
  chart.replaceChildren();
  const top = Math.max(1, ...minutes.map((m) => m.ends));
  axes(chart, top, (v) => String(v));
  const w = 560 / minutes.length;
  minutes.forEach((m, i) => {
    const x = 40 + i * w;
    const ok = m.ends - m.failed;
    const hOk = (110 * ok) / top;
    const hBad = (110 * m.failed) / top;
    if (ok > 0) chart.append(svg("rect", { class: "bar-ok", x: x + 1, y: 120 - hOk, width: w - 2, height: hOk }));
    if (m.failed > 0) chart.append(svg("rect", { class: "bar-bad", x: x + 1, y: 120 - hOk - hBad, width: w - 2, height: hBad }));
  });
  chart.setAttribute("data-total", String(minutes.reduce((a, m) => a + m.ends, 0)));
}

function linePath(minutes, key, top) {
  const w = 560 / minutes.length;
  let d = "";
  let pen = false;
  minutes.forEach((m, i) => {
    const v = m[key];
    if (v === null || v === undefined) { pen = false; return; }
    const x = 40 + i * w + w / 2;
    const y = 120 - (110 * v) / top;
    d += (pen ? " L" : " M") + x.toFixed(1) + " " + y.toFixed(1);
    pen = true;
  });
  return d.trim();
}

function renderWaiting(minutes) {
  const chart = document.getElementById("waiting");
  chart.replaceChildren();
  const top = Math.max(1, ...minutes.map((m) => m.wait_max || 0));
  axes(chart, top, seconds);
  for (const [key, cls] of [["wait_max", "line-max"], ["wait_mean", "line-mean"]]) {
    const d = linePath(minutes, key, top);
    if (d) chart.append(svg("path", { class: cls, d: d }));
    // A lone minute draws no line: a dot shows it.
    minutes.forEach((m, i) => {
      if (m[key] === null) return;
      const w = 560 / minutes.length;
      chart.append(svg("circle", { class: cls, cx: 40 + i * w + w / 2, cy: 120 - (110 * m[key]) / top, r: 1.5 }));
    });
  }
}

function render(state) {
  document.getElementById("who").textContent =
    "signed in as " + state.user + (state.sees_all ? " (admin: every user's jobs)" : "") +
    (state.cluster_active ? "" : " \u2014 the cluster is deactivated");
  renderHosts(state.hosts);
  renderQueue(state.queue);
  renderGroups(state.groups);
  renderJobs(state.jobs, state.sees_all);
  renderThroughput(state.charts.minutes);
  renderWaiting(state.charts.minutes);
  document.body.setAttribute("data-updated", String(state.now));
  const open = state.jobs.find((j) => j.id === detailId);
  if (open && !document.getElementById("detail").hidden &&
      (open.state !== detailState || (open.state === "running" && Date.now() - detailAt > 2000))) {
    showJob(detailId);
  }
}

function field(dl, name, value) {
  dl.append(el("dt", {}, name), el("dd", {}, value === null || value === undefined ? "" : value));
}

// The job whose details are open, and when they were last fetched (they follow its output
// while it runs, at most every two seconds).
let detailId = null;
let detailAt = 0;
let detailState = null;

function showTail(id, text, title) {
  const pre = document.getElementById(id);
  pre.hidden = text === null;
  pre.textContent = text === null ? "" : text;
  if (title) document.getElementById(title).hidden = !text;
}

async function showJob(id) {
  detailId = id;
  detailAt = Date.now();
  const answer = await fetch("/api/job?id=" + encodeURIComponent(id), { credentials: "same-origin" });
  const box = document.getElementById("detail");
  box.hidden = false;
  const title = document.getElementById("detail-title");
  const dl = document.getElementById("detail-fields");
  dl.replaceChildren();
  fill(document.querySelector("#history tbody"), []);
  if (!answer.ok) {
    title.textContent = "Job " + id + ": not available (" + answer.status + ")";
    document.getElementById("output").textContent = "";
    return;
  }
  const j = await answer.json();
  detailState = j.state;
  title.textContent = "Job " + j.id;
  field(dl, "state", j.state + (j.suspended ? " (suspended)" : ""));
  field(dl, "user", j.user);
  field(dl, "command", j.command);
  field(dl, "directory", j.cwd);
  field(dl, "group", j.group);
  field(dl, "info", j.info);
  field(dl, "host", j.host);
  field(dl, "slots", j.slots);
  field(dl, "attempt", j.attempt);
  field(dl, "submitted", when(j.submitted_at));
  field(dl, "started", when(j.started_at));
  field(dl, "ended", when(j.ended_at));
  field(dl, "exit code", j.exit_code);
  field(dl, "signal", j.signal);
  field(dl, "reason", j.reason);
  fill(document.querySelector("#history tbody"), j.history.map((h) => {
    const tr = el("tr", {});
    tr.append(el("td", {}, when(h.at)), stateCell(h.state, false), el("td", {}, h.attempt),
      el("td", {}, h.host || ""), el("td", {}, h.reason));
    return tr;
  }));
  const o = j.output;
  const where = o.host
    ? "output on host " + o.host + ": " + o.stdout + " (stderr: " + o.stderr + ")"
    : "not started yet; its output will go to " + o.stdout + " (stderr: " + o.stderr + ") on the host it runs on";
  const t = o.tail;
  document.getElementById("output").textContent = t && t.error ? where + " — " + t.error : where;
  showTail("output-tail", t && !t.error ? t.out : null);
  showTail("error-tail", t && !t.error ? t.err : null, "error-tail-title");
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/events");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "on"; });
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
  source.addEventListener("signedout", () => {
    source.close();
    live.textContent = "signed out: run `hConnect dashboard` for a new link";
    live.className = "off";
  });
  source.addEventListener("error", () => {
    live.className = "off";
    live.textContent = source.readyState === EventSource.CLOSED
      ? "disconnected: reload, or run `hConnect dashboard` for a new link"
      : "reconnecting\u2026";
  });
}

document.getElementById("detail-close").addEventListener("click", () => {
  document.getElementById("detail").hidden = true;
  detailId = null;
});
connect();
