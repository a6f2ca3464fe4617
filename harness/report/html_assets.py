"""The report page's own style sheet and script (plotly.js is inlined beside them).

Kept as Python strings rather than files so the page needs nothing but this
package to be written, installed editable or not.  The script draws a cell's
section (facts, checks, downtime bar, progress plot, RAM diff, logs, trend)
the first time it is opened, and filters the grid and the sections; it sets
text with ``textContent`` only, so a cell id or a QEMU error message can never
become markup.
"""
from __future__ import annotations

STYLE = r"""
:root { --passed:#2e9d48; --failed:#d62728; --error:#7b1fa2; --skipped:#9e9e9e; --flaky:#f0a000; --known-failure:#c9a800; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; margin: .6em 0 .2em; } h2 { font-size: 1.2em; margin: 1.2em 0 .4em; }
code { font: 13px ui-monospace, monospace; }
.badge { display:inline-block; padding:0 .5em; margin-right:.3em; border-radius:3px; color:#fff; }
.v-passed.badge, .vb.v-passed { background: var(--passed); } .v-failed.badge, .vb.v-failed { background: var(--failed); }
.v-error.badge, .vb.v-error { background: var(--error); } .v-skipped.badge, .vb.v-skipped { background: var(--skipped); }
.v-flaky.badge, .vb.v-flaky { background: var(--flaky); }
.v-known-failure.badge, .vb.v-known-failure { background: var(--known-failure); }
.vb { display:inline-block; min-width:3.6em; text-align:center; color:#fff; border-radius:3px; font-size:12px; padding:0 .3em; }
.facts { display:grid; grid-template-columns:max-content 1fr; gap:0 1em; margin:.5em 0; }
.facts dt { color:#666; } .facts dd { margin:0; }
.warn { background:#fff3cd; padding:.3em .6em; }
.why { color:#a33; margin-left:.6em; }
#failures ul { list-style:none; padding:0; } #failures li { margin:.15em 0; }
#failures a { text-decoration:none; color:inherit; }
#filters { position:sticky; top:0; background:#fff; padding:.4em 0; z-index:5; border-bottom:1px solid #ddd; }
.fv { margin-left:.6em; white-space:nowrap; } #shown { color:#666; margin-left:1em; }
.gridwrap { overflow:auto; max-height:70vh; border:1px solid #eee; }
table.grid { border-collapse:collapse; }
table.grid th, table.grid td { border:1px solid #eee; padding:2px; vertical-align:bottom; }
table.grid th.row { text-align:left; white-space:nowrap; font-weight:normal; position:sticky; left:0; background:#fafafa; }
table.grid th.col span { writing-mode:vertical-rl; transform:rotate(180deg); white-space:nowrap; font-weight:normal; font-size:12px; }
table.grid th.corner { font-size:11px; color:#888; font-weight:normal; text-align:left; }
table.grid td { vertical-align:middle; max-width:14em; }
.sq { display:inline-block; width:13px; height:13px; margin:1px; border-radius:2px; background:#ccc; }
.sq.v-passed { background:var(--passed); } .sq.v-failed { background:var(--failed); }
.sq.v-error { background:var(--error); } .sq.v-skipped { background:var(--skipped); }
.sq.v-flaky { background:var(--flaky); } .sq.v-known-failure { background:var(--known-failure); } .sq.off { opacity:.1; } .sq:hover { outline:2px solid #000; }
details.cell { border-top:1px solid #eee; padding:.2em 0; }
details.cell > summary { cursor:pointer; } details.cell[open] > summary { background:#f4f6fa; }
details.cell .dur { color:#888; margin-left:.5em; }
.body { padding:.5em 0 1em 1.5em; }
.body table { border-collapse:collapse; margin:.3em 0; }
.body td, .body th { border:1px solid #ddd; padding:.15em .5em; vertical-align:top; text-align:left; }
.body .fig { font:12px ui-monospace, monospace; white-space:pre-wrap; max-width:60em; }
.ok { color:var(--passed); font-weight:bold; } .bad { color:var(--failed); font-weight:bold; }
.xf { color:#555; font-weight:bold; }
.plot { width:100%; max-width:1000px; height:420px; } .trend { width:100%; max-width:700px; height:220px; }
.dtbar { position:relative; max-width:700px; margin:.4em 0 1.6em; }
.dtrow { position:relative; height:18px; margin:3px 0; background:#f3f3f3; }
.dtrow .fill { position:absolute; left:0; top:0; bottom:0; }
.dtrow .lab { position:absolute; left:4px; top:0; font-size:12px; white-space:nowrap; }
.dtmark { position:absolute; top:-2px; bottom:-16px; border-left:2px dashed #333; }
.dtmark span { position:absolute; bottom:0; left:3px; font-size:11px; white-space:nowrap; }
.note { color:#666; font-size:12px; }
footer { color:#888; margin-top:2em; font-size:12px; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var CELLS = null, RUNS = [];
  var COLORS = {passed: "#2e9d48", failed: "#d62728", error: "#7b1fa2", skipped: "#9e9e9e",
                flaky: "#f0a000", "known-failure": "#c9a800"};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(v, digits) {
    if (v === null || v === undefined || v === "") return "-";
    if (typeof v !== "number") return String(v);
    return v.toLocaleString("en-US", {maximumFractionDigits: digits === undefined ? 1 : digits});
  }
  function mib(b) { return b === null || b === undefined ? "-" : num(b / 1048576, 1) + " MiB"; }
  function showValue(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function kv(obj) {
    var keys = Object.keys(obj || {});
    return keys.map(function (k) { return k + ": " + showValue(obj[k]); }).join("\n");
  }
  function table(head, rows) {
    var t = el("table"), tr = el("tr");
    head.forEach(function (h) { tr.appendChild(el("th", null, h)); });
    t.appendChild(tr);
    rows.forEach(function (r) {
      var row = el("tr");
      r.forEach(function (c) {
        if (c instanceof Node) { var td = el("td"); td.appendChild(c); row.appendChild(td); }
        else row.appendChild(el("td", null, c));
      });
      t.appendChild(row);
    });
    return t;
  }

  function facts(c) {
    var i = c.in || {}, dl = el("dl", "facts");
    var items = [["verdict", c.v + (c.r ? ": " + c.r : "")], ["target", i.target],
      ["machine / accel", (i.machine || "-") + " / " + (i.accel || "-")],
      ["builds", i.builds], ["transport", i.transport], ["mode", i.mode],
      ["capabilities", i.caps], ["parameters", i.params || "-"],
      ["fault", i.fault], ["expected to fail", (i.xfail || []).join(", ")],
      ["timeout", i.timeout === undefined ? null : i.timeout + " s"],
      ["defined at", i.origin], ["duration", num(c.d, 2) + " s"]];
    items.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      dl.appendChild(el("dt", null, p[0])); dl.appendChild(el("dd", null, p[1]));
    });
    return dl;
  }

  function checks(c) {
    if (!c.ch || !c.ch.length) return el("p", "note", "No checks ran.");
    return table(["check", "result", "summary", "figures"], c.ch.map(function (k) {
      var name = k[0], passed = k[1], xfail = k[2], res;
      if (xfail) res = passed ? el("span", "bad", "PASSED (must fail: negative control)")
                              : el("span", "xf", "failed, as expected (negative control)");
      else res = passed ? el("span", "ok", "ok") : el("span", "bad", "FAILED");
      return [name, res, k[3], el("div", "fig", kv(k[4]))];
    }));
  }

  function downtimeBar(c) {
    var k = c.k || {};
    var q = k.downtime_ms, g = k.guest_gap_ms, lim = k.downtime_limit_ms, tol = k.tolerance_ms;
    if (q === undefined && g === undefined) return null;
    var top = Math.max(q || 0, g || 0, (lim || 0) + (tol || 0), k.guest_bound_ms || 0, 1) * 1.1;
    var box = el("div", "dtbar");
    function bar(label, v, color) {
      if (v === undefined || v === null) return;
      var row = el("div", "dtrow"), fill = el("div", "fill");
      fill.style.width = (100 * v / top) + "%"; fill.style.background = color;
      row.appendChild(fill); row.appendChild(el("span", "lab", label + " " + num(v) + " ms"));
      box.appendChild(row);
    }
    function mark(label, v) {
      if (v === undefined || v === null) return;
      var m = el("div", "dtmark"); m.style.left = (100 * v / top) + "%";
      m.appendChild(el("span", null, label)); box.appendChild(m);
    }
    var bad = lim !== undefined && q !== undefined && q > lim + (tol || 0);
    bar("QEMU downtime", q, bad ? "#f3a0a0" : "#9fd3a8");
    bar("guest-observed gap", g, "#a9c4ec");
    mark("limit " + num(lim) + " ms", lim);
    if (tol) mark("+ tolerance " + num(tol) + " ms", lim + tol);
    var wrap = el("div");
    wrap.appendChild(box);
    var check = (c.ch || []).filter(function (x) { return x[0] === "downtime"; })[0];
    var why = check && check[4] && check[4].tolerance_reason;
    if (why) wrap.appendChild(el("p", "note", "Tolerance: " + why));
    return wrap;
  }

  function progressPlot(c, div) {
    var s = c.s, t = s.t;
    var line = {mode: "lines+markers", type: "scatter", marker: {size: 5}};
    function tr(y, name, axis, extra) {
      var o = Object.assign({}, line, {x: t, y: y, name: name, yaxis: axis}, extra || {});
      return o;
    }
    var traces = [tr(s.rem, "remaining (MiB)", "y"), tr(s.tx, "transferred (MiB)", "y")];
    if (s.dr && s.dr.some(function (v) { return v !== null; }))
      traces.push(tr(s.dr, "dirty rate (pages/s)", "y2"));
    if (s.th) traces.push(tr(s.th, "throttle (%)", "y3", {line: {dash: "dot"}}));
    var shapes = [], notes = [];
    for (var i = 1; i < t.length; i++) {
      if (s.it[i] !== s.it[i - 1] && s.it[i] !== null) {
        shapes.push({type: "line", xref: "x", yref: "paper", x0: t[i], x1: t[i], y0: 0, y1: 1,
                     line: {color: "#999", width: 1, dash: "dot"}});
        notes.push({x: t[i], y: 1, xref: "x", yref: "paper", text: "iter " + s.it[i],
                    showarrow: false, font: {size: 10, color: "#666"}, yanchor: "bottom"});
      }
    }
    (s.sc || []).forEach(function (p) {
      if (p[1]) notes.push({x: t[p[0]], y: 0.4, xref: "x", yref: "paper", text: p[1],
                            showarrow: true, arrowhead: 0, ax: 0, ay: -14,
                            font: {size: 10, color: "#1f4e99"}});
    });
    var layout = {
      margin: {l: 60, r: 60, t: 30, b: 90}, showlegend: true,
      legend: {orientation: "h", y: -0.3},
      xaxis: {title: {text: "seconds since the cell started"}, zeroline: false, anchor: "y2"},
      yaxis: {title: {text: "MiB"}, domain: [0.5, 1], rangemode: "tozero"},
      yaxis2: {title: {text: "pages/s"}, domain: [0, 0.38], rangemode: "tozero"},
      shapes: shapes, annotations: notes
    };
    if (s.th) layout.yaxis3 = {title: {text: "throttle %"}, overlaying: "y2", side: "right",
                               range: [0, 100]};
    window.Plotly.newPlot(div, traces, layout, {displaylogo: false, responsive: true});
  }

  function trendPlot(c, div) {
    // A run without a downtime (the migration did not complete) is an x at 0.
    var xs = [], ys = [], colors = [], texts = [], symbols = [];
    c.tr.forEach(function (p) {
      var run = RUNS[p[0]] || [p[0], ""];
      xs.push("#" + run[0]); ys.push(p[2] === null ? 0 : p[2]);
      colors.push(COLORS[p[1]] || "#333"); symbols.push(p[2] === null ? "x" : "circle");
      texts.push(run[1] + " " + p[1] + (p[2] === null ? " (no downtime)" : ""));
    });
    var traces = [{x: xs, y: ys, type: "scatter", mode: "lines+markers", name: "QEMU downtime",
                   text: texts, marker: {color: colors, size: 9, symbol: symbols},
                   line: {color: "#bbb"}}];
    var k = c.k || {};
    if (k.downtime_limit_ms !== undefined)
      traces.push({x: xs, y: xs.map(function () { return k.downtime_limit_ms; }), type: "scatter",
                   mode: "lines", name: "limit", line: {dash: "dash", color: "#333"}});
    window.Plotly.newPlot(div, traces, {margin: {l: 50, r: 20, t: 10, b: 40},
      xaxis: {type: "category", title: {text: "history run"}}, yaxis: {title: {text: "ms"}, rangemode: "tozero"},
      showlegend: false}, {displaylogo: false, responsive: true});
  }

  function ramDiff(c) {
    var r = c.ram, box = el("div");
    box.appendChild(el("p", null, r.summary + " (" + num(r.pages, 0) + " page(s) differ of " +
                       mib(r.bytes) + " compared" + (r.explained ? ", " + r.explained +
                       " explained" : "") + ")"));
    if (r.ranges && r.ranges.length)
      box.appendChild(table(["first differing range (guest-physical)", "to", "pages"], r.ranges));
    return box;
  }

  function logs(c) {
    var ul = el("ul");
    c.logs.files.forEach(function (name) {
      var li = el("li"), a = el("a", null, name);
      a.href = c.logs.dir + "/" + encodeURIComponent(name); li.appendChild(a); ul.appendChild(li);
    });
    return ul;
  }

  function heading(body, text) { body.appendChild(el("h3", null, text)); }

  function render(det) {
    if (det.dataset.done) return;
    det.dataset.done = "1";
    var c = CELLS[+det.dataset.i], body = det.querySelector(".body");
    body.appendChild(facts(c));
    heading(body, "Checks"); body.appendChild(checks(c));
    var dt = downtimeBar(c);
    if (dt) { heading(body, "Downtime against limit and tolerance"); body.appendChild(dt); }
    if (c.ram) { heading(body, "RAM differences"); body.appendChild(ramDiff(c)); }
    if (c.s) {
      heading(body, "Migration progress (query-migrate samples)");
      var p = el("div", "plot"); body.appendChild(p);
      if (window.Plotly) progressPlot(c, p); else p.textContent = "plotly.js not available";
    }
    if (c.tr && c.tr.length) {
      heading(body, "Downtime over the last runs (history)");
      var tp = el("div", "trend"); body.appendChild(tp);
      if (window.Plotly) trendPlot(c, tp);
    }
    var mf = Object.assign({}, c.mf);
    if (Object.keys(mf).length) {
      heading(body, "Migration figures");
      body.appendChild(table(["figure", "value"], Object.keys(mf).map(function (k) {
        return [k, showValue(mf[k])]; })));
    }
    if (c.ph && Object.keys(c.ph).length) {
      heading(body, "Phases (s)");
      body.appendChild(table(Object.keys(c.ph), [Object.keys(c.ph).map(function (k) { return num(c.ph[k], 3); })]));
    }
    if (c.logs) { heading(body, "Logs (kept in " + decodeURIComponent(c.logs.dir) + ")"); body.appendChild(logs(c)); }
  }

  // The data block is gzipped JSON in base64 (see harness/report/html.py).
  function loadData() {
    var block = document.getElementById("mh-data");
    if (block.dataset.encoding !== "gzip+base64")
      return Promise.resolve(JSON.parse(block.textContent));
    var raw = atob(block.textContent.trim()), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(JSON.parse);
  }

  document.addEventListener("toggle", function (e) {
    var d = e.target;
    if (CELLS && d && d.classList && d.classList.contains("cell") && d.open) render(d);
  }, true);

  function openCell(id) {
    var det = document.getElementById(id);
    if (!CELLS || !det || det.tagName !== "DETAILS") return;
    det.hidden = false; det.open = true; render(det);
    det.scrollIntoView({block: "start"});
  }
  function openHash() {
    if (location.hash.length > 1) openCell(decodeURIComponent(location.hash.slice(1)));
  }
  window.addEventListener("hashchange", openHash);
  document.querySelector("table.grid").addEventListener("click", function (e) {
    var a = e.target.closest && e.target.closest("a.sq");
    if (a && location.hash === a.getAttribute("href")) { e.preventDefault(); openCell(a.getAttribute("href").slice(1)); }
  });

  function start(data) {
    CELLS = data.cells; RUNS = data.runs || [];
    var squares = [], sections = [];
    document.querySelectorAll("a.sq").forEach(function (a) { squares[+a.dataset.i] = a; });
    document.querySelectorAll("details.cell").forEach(function (d) { sections[+d.dataset.i] = d; });
    var q = document.getElementById("q"), shown = document.getElementById("shown");
    var boxes = Array.prototype.slice.call(document.querySelectorAll("#filters input[type=checkbox]"));
    function applyFilter() {
      var words = q.value.toLowerCase().split(/\s+/).filter(Boolean), on = {}, n = 0;
      boxes.forEach(function (b) { on[b.value] = b.checked; });
      CELLS.forEach(function (c, i) {
        var id = c.id.toLowerCase();
        var ok = on[c.v] !== false && words.every(function (w) {
          return w.charAt(0) === "-" && w.length > 1 ? id.indexOf(w.slice(1)) < 0 : id.indexOf(w) >= 0;
        });
        if (squares[i]) squares[i].classList.toggle("off", !ok);
        if (sections[i]) sections[i].hidden = !ok;
        if (ok) n++;
      });
      shown.textContent = n + " of " + CELLS.length + " cells shown";
    }
    q.addEventListener("input", applyFilter);
    boxes.forEach(function (b) { b.addEventListener("change", applyFilter); });
    applyFilter();
    document.querySelectorAll("details.cell[open]").forEach(render);
    openHash();
    document.body.dataset.ready = "1";
  }
  loadData().then(start, function (err) {
    var p = el("p", "warn", "This browser could not read the report's data (" + err +
               "); results.json beside this file has all of it.");
    document.body.insertBefore(p, document.body.firstChild);
    throw err;
  });
})();
"""
