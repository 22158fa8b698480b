// The wsfabric dashboard: polls ../admin/state and renders it. No framework,
// no build step; text goes into the page with textContent only.
"use strict";

(function () {
  const POLL_MS = 2000;
  const HISTORY = 60; // samples kept for the chart (2 minutes)
  const STATE_URL = new URL("../admin/state", window.location.href).toString();
  const history = [];
  let previous = null;
  const dropsSeen = {}; // cause -> {total, last}

  const $ = (id) => document.getElementById(id);

  function text(id, value) {
    $(id).textContent = value;
  }

  function cell(row, value, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (value instanceof Node) td.appendChild(value); else td.textContent = value;
    row.appendChild(td);
    return td;
  }

  function code(value) {
    const c = document.createElement("code");
    c.textContent = value;
    return c;
  }

  function fmt(n) {
    if (n === null || n === undefined) return "–";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return String(Math.round(n * 10) / 10);
  }

  function bytes(n) {
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
    return Math.round(n) + " B";
  }

  function replaceRows(tbody, rows, emptyText, columns) {
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, emptyText, "empty");
      td.colSpan = columns;
      tbody.appendChild(tr);
      return;
    }
    rows.forEach((tr) => tbody.appendChild(tr));
  }

  function renderNodes(state) {
    const nodes = (state.cluster && state.cluster.nodes) || [];
    const rows = nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.nodeId = n.id;
      tr.dataset.role = n.role;
      if (n.self) tr.className = "self";
      cell(tr, n.role);
      cell(tr, code(n.id));
      cell(tr, n.clients === null || n.clients === undefined ? "–" : fmt(n.clients));
      let st = "live (lease held)";
      if (n.self) st = state.node.ready ? "this node · ready" : "this node · not ready";
      cell(tr, st);
      return tr;
    });
    replaceRows($("nodes"), rows, "no node registered", 4);
    const checks = state.node.checks || {};
    const parts = [];
    if (checks.backends_connected !== undefined) parts.push("backends linked: " + checks.backends_connected);
    if (checks.gates_connected !== undefined) parts.push("gates linked: " + checks.gates_connected);
    const probe = checks.redis || checks.bus;
    if (probe && probe.probe_rtt_seconds !== null && probe.probe_rtt_seconds !== undefined) {
      parts.push((checks.redis ? "Redis" : "bus") + " probe round trip: " +
                 (probe.probe_rtt_seconds * 1000).toFixed(2) + " ms");
    }
    text("checks", parts.join(" · "));
  }

  function renderGroups(state) {
    const groups = (state.cluster && state.cluster.groups) || [];
    const largest = groups.reduce((m, g) => Math.max(m, g.size), 1);
    const rows = groups.map((g) => {
      const tr = document.createElement("tr");
      tr.dataset.group = g.name;
      cell(tr, g.name);
      cell(tr, fmt(g.size));
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = Math.max(2, Math.round((g.size / largest) * 100)) + "%";
      cell(tr, bar, "barcell");
      return tr;
    });
    replaceRows($("groups"), rows, "no groups", 3);
    const count = state.cluster && state.cluster.group_count;
    text("group-count", count === null || count === undefined ? "" :
         "(" + count + (count > groups.length ? ", largest " + groups.length + " shown" : "") + ")");
  }

  function renderDrops(state) {
    const drops = state.node.drops || {};
    const now = new Date().toLocaleTimeString();
    Object.keys(drops).forEach((cause) => {
      const seen = dropsSeen[cause];
      if (!seen || drops[cause] !== seen.total) {
        dropsSeen[cause] = { total: drops[cause], last: seen ? now : "before " + now };
      }
    });
    const rows = Object.keys(dropsSeen)
      .filter((cause) => dropsSeen[cause].total > 0)
      .sort()
      .map((cause) => {
        const tr = document.createElement("tr");
        tr.dataset.cause = cause;
        cell(tr, cause);
        cell(tr, fmt(dropsSeen[cause].total));
        cell(tr, dropsSeen[cause].last);
        return tr;
      });
    replaceRows($("drops"), rows, "nothing dropped", 3);
    const errors = (state.cluster && state.cluster.errors) || [];
    text("errors", errors.join("; "));
  }

  function rates(state) {
    const n = state.node;
    if (!previous) return null;
    const dt = state.time - previous.time;
    if (dt <= 0) return null;
    const p = previous.node;
    return {
      in: (n.messages_in - p.messages_in) / dt,
      out: (n.messages_out - p.messages_out) / dt,
      del: (n.deliveries - p.deliveries) / dt,
      bin: (n.bytes_in - p.bytes_in) / dt,
      bout: (n.bytes_out - p.bytes_out) / dt,
    };
  }

  function drawChart() {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 900;
    const height = canvas.clientHeight || 160;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const top = Math.max(1, ...history.flatMap((r) => [r.in, r.out, r.del]));
    ctx.strokeStyle = "#e2e5ea";
    ctx.fillStyle = "#6b7383";
    ctx.font = "11px system-ui, sans-serif";
    for (let i = 0; i <= 4; i++) {
      const y = 8 + ((height - 24) * i) / 4;
      ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(width, y); ctx.stroke();
      ctx.fillText(fmt(top * (1 - i / 4)), 2, y + 4);
    }
    const series = [["in", "#2f6feb"], ["out", "#e36209"], ["del", "#8250df"]];
    series.forEach(([key, color]) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      history.forEach((r, i) => {
        const x = 40 + ((width - 44) * (i + HISTORY - history.length)) / (HISTORY - 1);
        const y = 8 + (height - 24) * (1 - r[key] / top);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    });
  }

  function render(state) {
    const n = state.node;
    text("node-role", n.role);
    text("node-id", n.id);
    const status = $("status");
    status.className = "status " + (n.ready ? "ready" : "unavailable");
    status.textContent = n.ready ? "ready" : "not ready";
    status.title = n.reason || "";
    if (!n.ready && n.reason) status.textContent = "not ready: " + n.reason;
    text("connections", fmt(n.connections));
    text("clients-total", fmt(state.cluster ? state.cluster.clients : null));
    const r = rates(state);
    if (r) {
      text("rate-in", fmt(r.in));
      text("rate-out", fmt(r.out));
      text("rate-deliveries", fmt(r.del));
      text("rate-bytes", bytes(r.bin) + " / " + bytes(r.bout));
      history.push(r);
      if (history.length > HISTORY) history.shift();
    }
    renderNodes(state);
    renderGroups(state);
    renderDrops(state);
    drawChart();
    text("updated", "updated " + new Date(state.time * 1000).toLocaleTimeString());
    previous = state;
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  }

  async function poll() {
    try {
      const response = await fetch(STATE_URL, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (error) {
      const status = $("status");
      status.className = "status down";
      status.textContent = "admin listener unreachable";
      status.title = String(error);
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
