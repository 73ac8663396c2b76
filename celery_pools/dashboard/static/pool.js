// celery-pools dashboard: one pool's page, refreshed every second. The chart of in use and
// waiting is kept by the page: the last five minutes it has been open.
"use strict";

const poolName = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const history = [];  // [Redis time, in use, waiting, limit]
const WINDOW = 300;

function holderRow(holder, now, suspicious, abandoned) {
  const flags = el("td", {});
  if (suspicious) flags.append(el("span", { class: "flag" }, "suspicious"));
  if (abandoned) flags.append(el("span", { class: "flag" }, `abandoned (${abandoned.why || "ended"})`));
  const expires = abandoned ? `free in ${duration(abandoned.until - now)}` : duration(holder.lease_expires - now);
  return el("tr", { "data-task": holder.task_id },
    cell(holder.task_id), cell(holder.task_name || "-"), cell(holder.instance || "-"),
    cell(holder.hostname || "-"), cell(holder.pid ?? "-", true), cell(duration(now - holder.since), true),
    cell(expires, true), flags);
}

function waiterRow(waiter, index, now) {
  return el("tr", { "data-task": waiter.task_id },
    cell(index + 1, true), cell(waiter.task_id), cell(waiter.task_name || "-"),
    cell(waiter.instance || "-"), cell(duration(now - waiter.since), true),
    cell(duration(waiter.deadline - now), true));
}

function drawChart() {
  const chart = document.getElementById("chart");
  const width = 600, height = 160, pad = 24;
  if (!history.length) return chart.replaceChildren();
  const end = history[history.length - 1][0];
  const top = Math.max(1, ...history.map((h) => Math.max(h[1], h[2], h[3])));
  const x = (t) => pad + ((t - (end - WINDOW)) / WINDOW) * (width - 2 * pad);
  const y = (v) => height - pad - (v / top) * (height - 2 * pad);
  const line = (index, cls) => svg("polyline", {
    class: cls, points: history.map((h) => `${x(h[0]).toFixed(1)},${y(h[index]).toFixed(1)}`).join(" "),
  });
  const limit = history[history.length - 1][3];
  chart.replaceChildren(
    svg("line", { class: "limit", x1: pad, x2: width - pad, y1: y(limit), y2: y(limit) }),
    line(1, "in-use"), line(2, "waiting"),
    svg("text", { x: 2, y: y(top) + 4 }, top), svg("text", { x: 2, y: y(0) + 4 }, 0),
    svg("text", { x: pad, y: height - 6 }, "-5 min"), svg("text", { x: width - pad - 20, y: height - 6 }, "now"));
}

function drawHistogram(id, histogram) {
  const target = document.getElementById(id);
  const width = 300, height = 120, pad = 16;
  const counts = histogram.buckets.map((b, i) => b[1] - (i ? histogram.buckets[i - 1][1] : 0));
  const most = Math.max(1, ...counts);
  const step = (width - 2 * pad) / counts.length;
  const bars = counts.map((n, i) => svg("rect", {
    x: (pad + i * step).toFixed(1), width: Math.max(1, step - 2).toFixed(1),
    y: (height - pad - (n / most) * (height - 2 * pad)).toFixed(1),
    height: ((n / most) * (height - 2 * pad)).toFixed(1),
  }, svg("title", {}, `<= ${histogram.buckets[i][0] === null ? "inf" : duration(histogram.buckets[i][0])}: ${n}`)));
  const first = histogram.buckets[0][0], last = histogram.buckets[histogram.buckets.length - 2][0];
  target.replaceChildren(svg("g", { class: "histogram" }, ...bars,
    svg("text", { x: pad, y: height - 3 }, duration(first)),
    svg("text", { x: width - pad - 40, y: height - 3 }, `${duration(last)}+`)));
}

function render(pool) {
  const now = pool.now;
  document.title = `celery-pools: ${pool.name}`;
  document.getElementById("name").textContent = pool.name;
  const rates = pool.rates.map(rateText).filter(Boolean);
  document.getElementById("summary").textContent =
    `${pool.in_use} of ${pool.limit} in use, ${pool.free} free` +
    `${pool.reserved ? ` (${pool.reserved} more kept for calls on their way)` : ""}, ${pool.waiting} waiting` +
    `${pool.standbys ? ` (${pool.standbys} standing by)` : ""}; timeout ${duration(pool.timeout)}; ` +
    `waits by ${pool.wait}; instances: ${pool.instances.join(", ") || "none"}` +
    `${rates.length ? `; ${rates.join("; ")}` : ""}`;
  const suspicious = new Set(pool.metrics.suspicious_holders);
  const abandoned = new Map(pool.abandoned.map((a) => [a.task_id, a]));
  const holders = [...pool.holders, ...pool.abandoned.filter((a) => !pool.holders.some((h) => h.task_id === a.task_id))]
    .sort((a, b) => a.since - b.since);
  fillRows(document.getElementById("holders"),
    holders.map((h) => holderRow(h, now, suspicious.has(h.task_id), abandoned.get(h.task_id))));
  fillRows(document.getElementById("waiters"), pool.waiters.map((w, i) => waiterRow(w, i, now)));
  history.push([now, pool.in_use, pool.waiting, pool.limit]);
  while (history.length && history[0][0] < now - WINDOW) history.shift();
  drawChart();
  drawHistogram("wait-histogram", pool.metrics.wait);
  drawHistogram("hold-histogram", pool.metrics.hold);
  document.getElementById("wait-figures").textContent =
    `${pool.metrics.wait.count} waits; p50 ${duration(pool.metrics.wait.p50)}, p95 ${duration(pool.metrics.wait.p95)}`;
  document.getElementById("hold-figures").textContent =
    `${pool.metrics.hold.count} holds; p50 ${duration(pool.metrics.hold.p50)}, p95 ${duration(pool.metrics.hold.p95)}`;
}

function renderAdvice(advice) {
  document.getElementById("advice-headline").textContent = advice.recommended === null
    ? `No recommendation yet (limit ${advice.current_limit}).`
    : `Recommended limit ${advice.recommended} (now ${advice.current_limit}).`;
  document.getElementById("advice-steps").replaceChildren(...advice.steps.map((s) => el("li", {}, s)));
}

let current = null;  // the pool as last read

function confirmed(question) {
  return window.confirm(question);
}

function renderActions() {
  if (serverInfo === null) return;  // until /api/info answered
  renderSignIn("signin", serverInfo, renderActions);
  const section = document.getElementById("actions");
  section.hidden = !canChange();
  section.querySelectorAll("form, .instances").forEach((node) => node.remove());
  shownInstances = null;
  if (!canChange() || current === null) return;
  const url = `/api/pools/${encodeURIComponent(poolName)}`;
  // Only what the operator edits is sent: a change made elsewhere meanwhile is kept.
  section.append(trackEdits(actionForm("update-pool", [
    field("limit", "limit", { inputmode: "numeric", size: 5, value: String(current.limit) }),
    field("timeout (s)", "timeout", { inputmode: "decimal", size: 5, value: String(current.timeout) }),
    waitSelect(current.wait),
  ], "Save", async (form) => {
    const result = await send("PATCH", url, edited(form));
    if (result.ok) form.querySelectorAll("[data-edited]").forEach((input) => delete input.dataset.edited);
    return result;
  })));
  section.append(actionForm("clear-pool", [
    el("label", {}, el("input", { type: "checkbox", name: "release_held" }), " also free the slots of running tasks"),
  ], "Clear waiting tasks", async (form) => {
    const release = form.querySelector('[name="release_held"]').checked;
    const consequence = release ? "waiting tasks fail with PoolClearedError and running tasks' slots are freed"
      : "waiting tasks fail with PoolClearedError";
    if (!confirmed(`Clear pool ${poolName}? ${consequence}.`)) return null;
    return send("POST", `${url}/clear`, { release_held: release });
  }));
  section.append(actionForm("delete-pool", [], "Delete pool", async () => {
    if (!confirmed(`Delete pool ${poolName}? Its instances are unassigned and its waiting tasks fail.`)) return null;
    const result = await send("DELETE", url, {});
    if (result.ok) location.assign("/");
    return result;
  }));
  section.append(actionForm("assign-instance", [field("instance", "instance")], "Assign instance",
    (form) => send("PUT", `/api/instances/${encodeURIComponent(new FormData(form).get("instance"))}`, { pool: poolName })));
  section.append(el("div", { class: "instances" }));
  renderInstances();
}

// The forms of each instance, rebuilt only when the pool's instances change (a refresh never
// wipes what the operator is typing elsewhere).
let shownInstances = null;
function renderInstances() {
  const list = document.querySelector("#actions .instances");
  if (!list || current === null) return;
  const names = current.instances.join("\n");
  if (names === shownInstances) return;
  shownInstances = names;
  list.replaceChildren();
  for (const instance of current.instances) {
    const name = encodeURIComponent(instance);
    list.append(el("h3", {}, instance),
      actionForm(`rate-${instance}`, [field("rate", "rate", { placeholder: "60/m", size: 8 }),
        field("burst", "burst", { inputmode: "numeric", size: 3 })], "Set rate limit",
      (form) => send("PUT", `/api/rates/${name}`, Object.fromEntries(new FormData(form)))),
      actionForm(`unrate-${instance}`, [], "Remove rate limit", () => send("DELETE", `/api/rates/${name}`, {})),
      actionForm(`pause-${instance}`, [field("seconds", "seconds", { inputmode: "decimal", size: 5 })], "Pause",
        (form) => send("PUT", `/api/pauses/${name}`, Object.fromEntries(new FormData(form)))),
      actionForm(`resume-${instance}`, [], "Resume", () => send("DELETE", `/api/pauses/${name}`, {})),
      actionForm(`unassign-${instance}`, [], "Unassign", async () => {
        if (!confirmed(`Unassign ${instance} from ${poolName}?`)) return null;
        return send("DELETE", `/api/instances/${name}`, {});
      }));
  }
}

function renderAndAct(pool) {
  render(pool);
  const first = current === null;
  current = pool;
  if (first) renderActions();
  else renderInstances();
}

document.addEventListener("signed-out", renderActions);
loadInfo(() => renderActions());
poll(`/api/pools/${encodeURIComponent(poolName)}`, renderAndAct);
poll(`/api/pools/${encodeURIComponent(poolName)}/advice`, renderAdvice, 10000, true);
