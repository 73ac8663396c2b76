// celery-pools dashboard: the overview, every pool as a row, refreshed every second.
"use strict";

function poolRow(pool) {
  const link = el("a", { href: `/pools/${encodeURIComponent(pool.name)}` }, pool.name);
  const waiting = pool.standbys ? `${pool.waiting} (${pool.standbys} standing by)` : pool.waiting;
  const rates = pool.rates.map(rateText).filter(Boolean).join("; ") || "-";
  const row = el("tr", { "data-pool": pool.name },
    el("td", {}, link),
    el("td", { class: "in-use" }, bar(pool.in_use, pool.limit)),
    cell(pool.reserved ? `${pool.free} (+${pool.reserved} kept)` : pool.free, true),
    cell(waiting, true),
    cell(duration(pool.oldest_wait), true),
    cell(duration(pool.metrics.wait.p95), true),
    cell(duration(pool.timeout), true),
    cell(pool.wait),
    cell(pool.instances.join(", ") || "-"),
    cell(rates));
  row.querySelector(".in-use").dataset.inUse = String(pool.in_use);
  return row;
}

function render(data) {
  fillRows(document.getElementById("pools"), data.pools.map(poolRow));
  document.getElementById("empty").hidden = data.pools.length > 0;
}

function renderActions() {
  if (serverInfo === null) return;  // until /api/info answered
  renderSignIn("signin", serverInfo, renderActions);
  const section = document.getElementById("create");
  section.hidden = !canChange();
  section.querySelector("form")?.remove();
  if (!canChange()) return;
  section.append(actionForm("create-pool", [
    field("name", "name", { required: "" }),
    field("limit", "limit", { inputmode: "numeric", size: 5 }),
    field("timeout (s)", "timeout", { inputmode: "decimal", size: 5, value: "30" }),
    waitSelect("countdown"),
  ], "Create", async (form) => {
    const data = Object.fromEntries(new FormData(form));
    const result = await send("POST", "/api/pools", data);
    if (result.ok) form.reset();
    return result;
  }));
}

document.addEventListener("signed-out", renderActions);
loadInfo((info) => {
  document.getElementById("server").textContent =
    `Pools in ${info.redis}${info.read_only ? " (read-only)" : ""}`;
  renderActions();
});
poll("/api/pools", render);
