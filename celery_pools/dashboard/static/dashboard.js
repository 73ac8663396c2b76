// celery-pools dashboard: what both pages share. Everything shown is built with DOM nodes and
// text nodes from the JSON API; no HTML string ever carries data, so names and task fields are
// always text.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An SVG element with attributes.
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Seconds for people: "-", "350 ms", "4.2 s", "3 min 5 s", "2 h 1 min".
function duration(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  const s = Math.max(0, value);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const [big, small, bigUnit, smallUnit] = s < 3600
    ? [Math.floor(s / 60), Math.round(s % 60), "min", "s"]
    : [Math.floor(s / 3600), Math.round((s % 3600) / 60), "h", "min"];
  return small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`;
}

// A bar of `used` out of `limit`, and the figure beside it.
function bar(used, limit) {
  const width = 120;
  const filled = limit > 0 ? Math.min(width, (width * used) / limit) : 0;
  const graphic = svg("svg", { class: "bar", width, height: 12, viewBox: `0 0 ${width} 12`, "aria-hidden": "true" },
    svg("rect", { class: "track", x: 0, y: 0, width, height: 12 }),
    svg("rect", { class: used >= limit ? "used full" : "used", x: 0, y: 0, width: filled, height: 12 }));
  return el("span", {}, graphic, `${used} / ${limit}`);
}

// Replace the rows of `table`'s body.
function fillRows(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows);
}

// A cell, right-aligned when it holds a number.
function cell(content, number) {
  return el("td", number ? { class: "number" } : {}, content);
}

// Fetch `url` as JSON every `interval` ms; `render(data)` on success. Unless `quiet`, the #state
// line says when the page was last updated, or why it could not be (the server's error, e.g.
// Redis unreachable), and what is shown is dimmed while it is stale.
function poll(url, render, interval = 1000, quiet = false) {
  const state = document.getElementById("state");
  const main = document.querySelector("main");
  let last = null;
  async function tick() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      render(data);
      last = new Date();
      if (!quiet) {
        state.dataset.state = "ok";
        state.textContent = `Last updated ${last.toLocaleTimeString()}`;
        main.classList.remove("stale");
      }
    } catch (error) {
      if (!quiet) {
        state.dataset.state = "error";
        const since = last ? ` (showing what was read at ${last.toLocaleTimeString()})` : "";
        state.textContent = `${error.message}${since}`;
        main.classList.add("stale");
      }
    } finally {
      setTimeout(tick, interval);
    }
  }
  tick();
}

// What a rate limit or pause of an instance says.
function rateText(rate) {
  const parts = [];
  if (rate.rate) parts.push(`${rate.instance}: ${rate.rate}`);
  if (rate.paused_for > 0) parts.push(`${rate.instance}: paused ${duration(rate.paused_for)}`);
  return parts.join(", ");
}

// --- Changes -------------------------------------------------------------------------------
// The operator's credential lives in this tab's sessionStorage and goes with each change as an
// Authorization header; the server never challenges, so the browser never sends one by itself.

const AUTH_KEY = "celery-pools-authorization";
let serverInfo = null;

function authorization() {
  return sessionStorage.getItem(AUTH_KEY);
}

// Whether the page may offer changes: the server takes them and the operator signed in.
function canChange() {
  return serverInfo !== null && !serverInfo.read_only && authorization() !== null;
}

// Send a change; resolves to {ok, status, data}.
async function send(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", Authorization: authorization() || "" },
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await response.json(); } catch (error) { data = { error: `HTTP ${response.status}` }; }
  if (response.status === 401) {
    // The credential was refused: forget it and let the page offer the sign-in again.
    sessionStorage.removeItem(AUTH_KEY);
    document.dispatchEvent(new Event("signed-out"));
  }
  return { ok: response.ok, status: response.status, data };
}

// The form field an error names ("pool name" is the form's "name").
const FIELD_OF = {
  "pool name": "name", "connector instance": "instance", instance: "instance",
  "pause seconds": "seconds", "rate limit": "rate",
};

// Show a failed change's error next to the field it names, else at the form's foot.
function showError(form, data) {
  clearErrors(form);
  const field = FIELD_OF[data.field] || data.field;
  const input = field ? form.querySelector(`[name="${CSS.escape(field)}"]`) : null;
  const message = el("span", { class: "error", role: "alert" }, data.error || "failed");
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.after(message);
  } else {
    form.append(message);
  }
}

function clearErrors(form) {
  form.querySelectorAll(".error").forEach((node) => node.remove());
  form.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
}

// A labelled input.
function field(label, name, attrs) {
  return el("label", {}, `${label} `, el("input", { name, ...(attrs || {}) }));
}

// A select of waiting modes.
function waitSelect(current) {
  const select = el("select", { name: "wait" });
  for (const mode of ["countdown", "handoff"]) {
    const option = el("option", { value: mode }, mode);
    if (mode === current) option.selected = true;
    select.append(option);
  }
  return el("label", {}, "waiting mode ", select);
}

// A form whose submit sends `build(form)` and calls `done(data)` on success.
function actionForm(id, children, submit, run) {
  const form = el("form", { id, class: "action" }, ...children, el("button", { type: "submit" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const result = await run(form);
    if (result && !result.ok) showError(form, result.data);
    else if (result) form.dataset.done = String(Date.now());
  });
  return form;
}

// The sign-in box in the header: what the server says it takes, a token or a user. A sign-in
// form already shown is kept as it is, so a re-render never wipes what the operator is typing.
function renderSignIn(target, info, changed) {
  const box = document.getElementById(target);
  if (info.read_only) {
    box.replaceChildren(el("span", { class: "read-only" }, `Read-only: ${info.why_read_only}`));
    return;
  }
  if (authorization()) {
    const out = el("button", { type: "button", id: "sign-out" }, "Sign out");
    out.addEventListener("click", () => { sessionStorage.removeItem(AUTH_KEY); changed(); });
    box.replaceChildren(el("span", {}, "Signed in as an operator. "), out);
    return;
  }
  if (box.querySelector("#sign-in")) return;
  const form = el("form", { id: "sign-in", class: "action" },
    field("token", "token", { type: "password", autocomplete: "off" }),
    el("span", {}, " or "),
    field("user", "user", { autocomplete: "username" }),
    field("password", "password", { type: "password", autocomplete: "current-password" }),
    el("button", { type: "submit" }, "Sign in to change pools"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const token = String(data.get("token") || "").trim();
    const user = String(data.get("user") || "").trim();
    if (!token && !user) {
      showError(form, { field: "token", error: "type the operator token, or a user and password" });
      return;
    }
    const value = token ? `Bearer ${token}` : `Basic ${base64(`${user}:${data.get("password") || ""}`)}`;
    sessionStorage.setItem(AUTH_KEY, value);
    changed();
  });
  box.replaceChildren(form);
}

// The base64 of `text`'s UTF-8 bytes (btoa alone takes only Latin-1).
function base64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

// The fields of `form` the operator changed since it was built (see `trackEdits`).
function edited(form) {
  const data = {};
  for (const input of form.querySelectorAll("[data-edited]")) data[input.name] = input.value;
  return data;
}

// Mark each field of `form` the operator changes, so that only those are sent.
function trackEdits(form) {
  form.addEventListener("input", (event) => { event.target.dataset.edited = "1"; });
  form.addEventListener("change", (event) => { event.target.dataset.edited = "1"; });
  return form;
}

// Read /api/info once, then `ready(info)`.
async function loadInfo(ready) {
  try {
    serverInfo = await (await fetch("/api/info")).json();
  } catch (error) {
    serverInfo = { read_only: true, why_read_only: "the server did not answer", redis: "?" };
  }
  ready(serverInfo);
}
