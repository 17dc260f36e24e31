// redis-client tunnel dashboard: read-only live view of the snapshots the tunnel pushes over
// a same-origin WebSocket. Plain canvas charts, no external code. Nothing here sends anything
// to the tunnel: the page cannot run commands.
"use strict";

(() => {
  const MAX_POINTS = 300;            // five minutes at one snapshot a second
  const PALETTE = ["#3b82f6", "#e4572e", "#17a398", "#f2a541", "#8e6cd8", "#d6457f",
                   "#4c9f38", "#6b7385", "#00a6d6", "#b4654a", "#9c9c1c", "#5b5fc7"];
  const history = [];                // [{t, snap}]
  const nodeColors = new Map();
  const state = {
    snapshots: 0, points: 0, nodes: 0, connected: false, charts: {}, errors: [],
  };
  window.__dashboardState = state;

  // -- formatting -------------------------------------------------------------------------

  function si(value, unit) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    const abs = Math.abs(value);
    const steps = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (const [size, prefix] of steps) {
      if (abs >= size) return (value / size).toFixed(abs >= 10 * size ? 0 : 1) + " " + prefix + unit;
    }
    const digits = abs >= 10 || value === Math.round(value) ? 0 : 1;
    return value.toFixed(digits) + (unit ? " " + unit : "");
  }
  const fmtRate = (v) => si(v, "/s").replace(" /s", "/s");
  const fmtBytes = (v) => si(v, "B/s");
  const fmtCount = (v) => si(v, "");
  function fmtMicros(us) {
    if (us === null || us === undefined || !isFinite(us)) return "–";
    if (us >= 1e6) return (us / 1e6).toFixed(2) + " s";
    if (us >= 1e3) return (us / 1e3).toFixed(us >= 1e4 ? 0 : 1) + " ms";
    return us.toFixed(0) + " µs";
  }
  function fmtUptime(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, sec = s % 60;
    return "up " + (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + sec + "s";
  }
  function fmtSlots(slots) {
    if (!slots || !slots.length) return "–";
    const parts = slots.slice(0, 4).map(([a, b]) => (a === b ? String(a) : a + "-" + b));
    if (slots.length > 4) parts.push("… +" + (slots.length - 4) + " ranges");
    return parts.join(", ");
  }
  function colorOf(address) {
    if (!nodeColors.has(address)) {
      nodeColors.set(address, PALETTE[nodeColors.size % PALETTE.length]);
    }
    return nodeColors.get(address);
  }
  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  // -- charts ---------------------------------------------------------------------------------

  // The top of the y axis: four grid steps of a round size (1, 2, 2.5 or 5 times a power of 10).
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const raw = value / 4;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (raw <= step * power) return 4 * step * power;
    }
    return 40 * power;
  }

  class Chart {
    constructor(figure, format) {
      this.canvas = figure.querySelector("canvas");
      this.legend = figure.querySelector(".legend");
      this.format = format;
      this.legendKey = "";
    }

    draw(series) {
      const canvas = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth, height = canvas.clientHeight;
      if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
        canvas.width = Math.round(width * ratio);
        canvas.height = Math.round(height * ratio);
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      const left = 64, right = 8, top = 8, bottom = 20;
      const plotW = Math.max(width - left - right, 10), plotH = Math.max(height - top - bottom, 10);

      let tMin = Infinity, tMax = -Infinity, vMax = 0, drawn = 0;
      for (const s of series) {
        for (const [t, v] of s.points) {
          if (t < tMin) tMin = t;
          if (t > tMax) tMax = t;
          if (v !== null && v > vMax) vMax = v;
        }
      }
      if (!isFinite(tMin)) { tMin = Date.now() - 60000; tMax = Date.now(); }
      if (tMax - tMin < 60000) tMin = tMax - 60000;
      const yMax = niceMax(vMax);
      const x = (t) => left + ((t - tMin) / (tMax - tMin)) * plotW;
      const y = (v) => top + plotH - (v / yMax) * plotH;

      // grid and axes
      ctx.font = "11px system-ui, sans-serif";
      ctx.lineWidth = 1;
      ctx.strokeStyle = css("--grid");
      ctx.fillStyle = css("--axis");
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (let i = 0; i <= 4; i++) {
        const v = (yMax * i) / 4;
        const py = Math.round(y(v)) + 0.5;
        ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(left + plotW, py); ctx.stroke();
        ctx.fillText(this.format(v), left - 6, py);
      }
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      const span = (tMax - tMin) / 1000;
      const tick = span > 240 ? 60 : span > 120 ? 30 : 15;
      for (let ago = 0; ago <= span; ago += tick) {
        const px = x(tMax - ago * 1000);
        if (px < left + 10) break;
        ctx.textAlign = ago === 0 ? "right" : "center";
        ctx.fillText(ago === 0 ? "now" : "-" + ago + "s", px, top + plotH + 4);
      }

      // lines
      ctx.lineWidth = 1.75;
      ctx.lineJoin = "round";
      for (const s of series) {
        ctx.strokeStyle = s.color;
        ctx.setLineDash(s.dashed ? [5, 4] : []);
        ctx.beginPath();
        let pen = false, segments = 0;
        for (const [t, v] of s.points) {
          if (v === null || v === undefined) { pen = false; continue; }
          if (pen) { ctx.lineTo(x(t), y(v)); segments++; } else { ctx.moveTo(x(t), y(v)); pen = true; }
        }
        ctx.stroke();
        if (segments > 0) drawn++;
      }
      ctx.setLineDash([]);
      this.updateLegend(series);
      return { lines: drawn, max: vMax };
    }

    updateLegend(series) {
      const key = series.map((s) => s.label + s.color).join("|");
      if (key === this.legendKey) return;
      this.legendKey = key;
      this.legend.replaceChildren(...series.filter((s) => !s.hideLegend).map((s) => {
        const item = document.createElement("span");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = s.color;
        item.append(swatch, document.createTextNode(s.label));
        return item;
      }));
    }
  }

  const charts = {};
  for (const figure of document.querySelectorAll("figure[data-chart]")) {
    const name = figure.dataset.chart;
    const format = { ops: fmtRate, bytes: fmtBytes, latency: fmtMicros, clients: fmtCount,
                     redirects: fmtRate, reconnects: fmtCount }[name];
    charts[name] = new Chart(figure, format);
  }

  function addresses() {
    const seen = new Set();
    for (const { snap } of history) for (const node of snap.nodes) seen.add(node.address);
    return [...seen];
  }

  function nodeSeries(address, pick) {
    return history.map(({ t, snap }) => {
      const node = snap.nodes.find((n) => n.address === address);
      return [t, node ? pick(node) : null];
    });
  }

  function totalSeries(pick) {
    return history.map(({ t, snap }) => [t, pick(snap)]);
  }

  function seriesFor(name) {
    const nodes = addresses();
    switch (name) {
      case "ops":
        return nodes.map((a) => ({ label: a, color: colorOf(a), points: nodeSeries(a, (n) => n.rates.ops) }));
      case "bytes":
        return [
          { label: "in (requests)", color: PALETTE[0], points: totalSeries((s) => s.rates.bytes_in) },
          { label: "out (replies)", color: PALETTE[1], points: totalSeries((s) => s.rates.bytes_out) },
        ];
      case "latency":
        return nodes.flatMap((a) => [
          { label: a, color: colorOf(a), points: nodeSeries(a, (n) => n.latency.p50_us) },
          { label: a + " p99", color: colorOf(a), dashed: true, hideLegend: true,
            points: nodeSeries(a, (n) => n.latency.p99_us) },
        ]);
      case "clients":
        return [{ label: "connected", color: PALETTE[2], points: totalSeries((s) => s.clients.connected) }];
      case "redirects":
        return [
          { label: "MOVED", color: PALETTE[4], points: totalSeries((s) => s.rates.moved) },
          { label: "ASK", color: PALETTE[3], points: totalSeries((s) => s.rates.ask) },
          { label: "retries", color: PALETTE[2], points: totalSeries((s) => s.rates.retries) },
          { label: "errors", color: PALETTE[1], points: totalSeries((s) => s.rates.errors) },
        ];
      case "reconnects":
        return [{ label: "reconnects", color: PALETTE[5],
                  points: totalSeries((s) => s.totals.upstream_reconnects) }];
      default:
        return [];
    }
  }

  function drawCharts() {
    for (const [name, chart] of Object.entries(charts)) {
      state.charts[name] = chart.draw(seriesFor(name));
    }
  }

  // -- tiles and table ------------------------------------------------------------------------

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    row.append(td);
    return td;
  }

  function renderTable(snap) {
    const body = document.querySelector("#nodes tbody");
    const rows = snap.nodes.map((node) => {
      const row = document.createElement("tr");
      if (!node.in_topology) row.className = "gone";
      const first = cell(row, node.address);
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.style.background = colorOf(node.address);
      first.prepend(dot);
      cell(row, node.role || "–");
      cell(row, fmtSlots(node.slots), "slots");
      cell(row, node.listener || "–");
      cell(row, String(node.ops), "num");
      cell(row, fmtRate(node.rates.ops), "num");
      cell(row, fmtMicros(node.latency.p50_us_all), "num");
      cell(row, fmtMicros(node.latency.p99_us_all), "num");
      cell(row, String(node.errors), "num");
      cell(row, String(node.moved), "num");
      cell(row, String(node.ask), "num");
      cell(row, String(node.retries), "num");
      cell(row, String(node.upstream_reconnects), "num");
      return row;
    });
    body.replaceChildren(...rows);
    document.getElementById("empty-note").hidden = rows.length > 0;
    state.nodes = rows.length;
  }

  function render(snap) {
    setText("mode", snap.mode);
    setText("uptime", fmtUptime(snap.uptime));
    setText("t-clients", String(snap.clients.connected));
    setText("t-ops", fmtRate(snap.rates.ops));
    setText("t-bytes", fmtBytes(snap.rates.bytes_in) + " / " + fmtBytes(snap.rates.bytes_out));
    setText("t-latency", fmtMicros(snap.latency.p50_us) + " / " + fmtMicros(snap.latency.p99_us));
    setText("t-commands", fmtCount(snap.totals.ops));
    setText("t-errors", snap.totals.errors + " · " + snap.totals.moved + " · " + snap.totals.ask);
    renderTable(snap);
    drawCharts();
  }

  // -- the feed -------------------------------------------------------------------------------

  function setStatus(name) {
    const status = document.getElementById("status");
    status.className = "status " + name;
    status.textContent = name;
  }

  let retryDelay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws");
    socket.onopen = () => {
      retryDelay = 500;
      state.connected = true;
      setStatus("live");
    };
    socket.onmessage = (event) => {
      let snap;
      try {
        snap = JSON.parse(event.data);
      } catch (err) {
        state.errors.push(String(err));
        return;
      }
      history.push({ t: snap.time * 1000, snap });
      if (history.length > MAX_POINTS) history.splice(0, history.length - MAX_POINTS);
      state.snapshots++;
      state.points = history.length;
      render(snap);
    };
    socket.onclose = () => {
      state.connected = false;
      setStatus("reconnecting");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    };
  }

  window.addEventListener("resize", drawCharts);
  window.addEventListener("error", (event) => state.errors.push(String(event.message)));
  connect();
})();
