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
