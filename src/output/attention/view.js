// bert-cli attention view: plain JavaScript and SVG/canvas, no framework, no network.
// The page's data comes before this script as `BERT_CLI_DATA.push({...})` calls, one per
// input: tokens, the prediction, per-layer rollout, and every head's attention quantised
// to bytes (base64, [layer][head][query][key], value = byte / scale).
(function () {
  "use strict";
  var D = window.BERT_CLI_DATA || [];
  var THRESHOLD = 0.05; // lines below this weight are not drawn
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31",
    "#843c39", "#7b4173", "#3182bd"];
  var state = { entry: 0, layer: 0, heads: null, hover: null };

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }

  // Decodes an entry's attention once: Uint8Array of L*H*n*n bytes.
  function bytes(entry) {
    if (!entry._bytes) {
      var raw = atob(entry.attention);
      var b = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) b[i] = raw.charCodeAt(i);
      entry._bytes = b;
    }
    return entry._bytes;
  }
  function weight(entry, layer, head, q, k) {
    var n = entry.tokens.length;
    var i = ((layer * entry.heads.length + head) * n + q) * n + k;
    return bytes(entry)[i] / entry.scale;
  }

  function selectors() {
    var box = document.getElementById("controls");
    box.textContent = "";
    if (D.length > 1) {
      var s = el("select", { id: "entry" });
      D.forEach(function (e, i) {
        var label = "#" + e.record + (e.parts ? " [" + (e.part + 1) + "/" + e.parts + "]" : "") +
          (e.id != null ? " (" + e.id + ")" : "") + ": " + e.text + (e.text_pair ? " || " + e.text_pair : "");
        s.appendChild(el("option", { value: i }, label.length > 90 ? label.slice(0, 87) + "..." : label));
      });
      s.value = state.entry;
      s.onchange = function () { state.entry = +s.value; state.heads = null; render(); };
      box.appendChild(el("label", {}, "Input ")).appendChild(s);
    }
    var e = D[state.entry];
    var ls = el("select", { id: "layer" });
    e.layers.forEach(function (l) { ls.appendChild(el("option", { value: e.layers.indexOf(l) }, "layer " + l)); });
    ls.value = state.layer;
    ls.onchange = function () { state.layer = +ls.value; render(); };
    box.appendChild(el("label", {}, " Layer ")).appendChild(ls);
    var hs = el("span", { id: "heads" });
    e.heads.forEach(function (h, i) {
      var b = el("button", { "data-head": i, title: "head " + h }, String(h));
      b.style.background = state.heads[i] ? COLORS[i % COLORS.length] : "#eee";
      b.style.color = state.heads[i] ? "#fff" : "#333";
      b.onclick = function () { state.heads[i] = !state.heads[i]; render(); };
      hs.appendChild(b);
    });
    box.appendChild(el("label", {}, " Heads ")).appendChild(hs);
  }

  function prediction() {
    var e = D[state.entry];
    var box = document.getElementById("prediction");
    box.textContent = "";
    box.appendChild(el("div", { "class": "text" }, e.text));
    if (e.text_pair) box.appendChild(el("div", { "class": "text pair" }, e.text_pair));
    var t = el("table");
    e.labels.forEach(function (l, i) {
      var row = el("tr", l === e.label ? { "class": "top" } : {});
      row.appendChild(el("td", {}, l));
      var bar = el("td");
      var fill = el("div", { "class": "bar" });
      fill.style.width = Math.round(200 * Math.max(0, Math.min(1, e.probs[i]))) + "px";
      bar.appendChild(fill);
      row.appendChild(bar);
      row.appendChild(el("td", { "class": "num" }, e.probs[i].toFixed(4)));
      t.appendChild(row);
    });
    box.appendChild(t);
  }

  // Head view: queries on the left, keys on the right, one line per weight above THRESHOLD.
  function headView() {
    var e = D[state.entry], n = e.tokens.length, rowH = 18, width = 520;
    var box = document.getElementById("headview");
    box.textContent = "";
    var s = svg("svg", { width: width, height: n * rowH + 10, id: "heads-svg" });
    var lines = svg("g", { id: "lines" });
    s.appendChild(lines);
    for (var side = 0; side < 2; side++) {
      e.tokens.forEach(function (tok, i) {
        var t = svg("text", {
          x: side ? width - 140 : 140, y: i * rowH + 14, "text-anchor": side ? "start" : "end",
          "class": "token" + (state.hover === i && !side ? " hover" : "") +
            (e.sentence_b_start != null && i >= e.sentence_b_start ? " second" : ""), "data-index": i
        });
        t.textContent = tok;
        if (!side) {
          t.onmouseenter = function () { state.hover = i; drawLines(lines); };
          t.onmouseleave = function () { state.hover = null; drawLines(lines); };
        }
        s.appendChild(t);
      });
    }
    box.appendChild(s);
    drawLines(lines);
  }
  function drawLines(g) {
    var e = D[state.entry], n = e.tokens.length, rowH = 18, width = 520;
    while (g.firstChild) g.removeChild(g.firstChild);
    e.heads.forEach(function (h, hi) {
      if (!state.heads[hi]) return;
      for (var q = 0; q < n; q++) {
        if (state.hover !== null && state.hover !== q) continue;
        for (var k = 0; k < n; k++) {
          var w = weight(e, state.layer, hi, q, k);
          if (w < THRESHOLD) continue;
          g.appendChild(svg("line", {
            "class": "att", x1: 146, y1: q * rowH + 10, x2: width - 146, y2: k * rowH + 10,
            stroke: COLORS[hi % COLORS.length], "stroke-width": 2,
            "stroke-opacity": Math.min(1, w).toFixed(3), "data-q": q, "data-k": k, "data-w": w
          }));
        }
      }
    });
  }

  // Model view: every layer x head as a small heat map; a click opens it in the head view.
  function modelView() {
    var e = D[state.entry], n = e.tokens.length, cell = Math.max(2, Math.floor(72 / n)) || 1;
    var size = Math.max(24, Math.min(72, cell * n));
    var box = document.getElementById("modelview");
    box.textContent = "";
    var grid = el("div", { "class": "grid" });
    grid.style.gridTemplateColumns = "auto repeat(" + e.heads.length + ", " + (size + 6) + "px)";
    grid.appendChild(el("div"));
    e.heads.forEach(function (h) { grid.appendChild(el("div", { "class": "hdr" }, "head " + h)); });
    e.layers.forEach(function (l, li) {
      grid.appendChild(el("div", { "class": "hdr" }, "layer " + l));
      e.heads.forEach(function (h, hi) {
        var c = el("canvas", { width: n, height: n, title: "layer " + l + ", head " + h });
        c.style.width = c.style.height = size + "px";
        var ctx = c.getContext("2d"), img = ctx.createImageData(n, n);
        for (var q = 0; q < n; q++) for (var k = 0; k < n; k++) {
          var v = 255 - Math.round(255 * weight(e, li, hi, q, k)), p = 4 * (q * n + k);
          img.data[p] = v; img.data[p + 1] = v; img.data[p + 2] = 255; img.data[p + 3] = 255;
        }
        ctx.putImageData(img, 0, 0);
        c.onclick = function () {
          state.layer = li;
          state.heads = e.heads.map(function (_, j) { return j === hi; });
          render();
          document.getElementById("headview").scrollIntoView();
        };
        grid.appendChild(c);
      });
    });
    box.appendChild(grid);
  }

  // Rollout: how much of the first token's representation, after the chosen layer, flows
  // from each input token (head-averaged attention with the residual, multiplied up).
  function rollout() {
    var e = D[state.entry];
    var box = document.getElementById("rollout");
    box.textContent = "";
    if (!e.rollout) {
      box.appendChild(el("p", {}, "Rollout multiplies through every layer and head; this dump kept only some (layers " +
        e.layers.join(", ") + "; heads " + e.heads.join(", ") + "), so it has none."));
      return;
    }
    var r = e.rollout[state.layer];
    box.appendChild(el("p", {}, "After layer " + e.layers[state.layer] + ": where " +
      e.tokens[0] + "'s attention flows from."));
    var t = el("table", { id: "rollout-table" });
    e.tokens.forEach(function (tok, i) {
      var row = el("tr");
      row.appendChild(el("td", { "class": "tok" }, tok));
      var bar = el("td"), fill = el("div", { "class": "bar" });
      fill.style.width = Math.round(300 * r[i]) + "px";
      bar.appendChild(fill);
      row.appendChild(bar);
      row.appendChild(el("td", { "class": "num" }, r[i].toFixed(4)));
      t.appendChild(row);
    });
    box.appendChild(t);
  }

  function render() {
    if (!D.length) {
      document.getElementById("controls").textContent = "This dump has no inputs.";
      return;
    }
    var e = D[state.entry];
    if (!state.heads) state.heads = e.heads.map(function () { return true; });
    if (state.layer >= e.layers.length) state.layer = 0;
    selectors();
    prediction();
    headView();
    modelView();
    rollout();
  }

  // `#selftest` in the URL: the page checks itself and writes what it found into
  // <pre id="selftest">, for a headless browser to read (tests/attention_view.rs).
  function selftest(errors) {
    var out = { errors: errors, entries: D.length, resources: 0, counts: [], cells: [] };
    try {
      var e = D[0];
      state.entry = 0; state.hover = null;
      for (var li = 0; li < e.layers.length; li++) {
        state.layer = li; state.heads = e.heads.map(function (_, j) { return j === 0; });
        render();
        var select = document.getElementById("layer");
        out.counts.push({ layer: e.layers[li], head: e.heads[0], select: +select.value,
          lines: document.querySelectorAll("#lines line.att").length });
      }
      var n = e.tokens.length;
      for (var q = 0; q < n; q += Math.max(1, Math.floor(n / 5))) {
        out.cells.push([0, 0, q, n - 1 - q, weight(e, 0, 0, q, n - 1 - q)]);
      }
      out.second = document.querySelectorAll("#heads-svg text.token.second").length;
      out.pairText = document.querySelectorAll("#prediction .text.pair").length;
      out.rollout = D[0].rollout ? D[0].rollout[D[0].rollout.length - 1] : null;
      out.rolloutRows = document.querySelectorAll("#rollout-table tr").length;
      out.canvases = document.querySelectorAll("#modelview canvas").length;
      out.resources = (performance.getEntriesByType("resource") || []).length;
    } catch (err) {
      out.errors.push(String(err && err.stack || err));
    }
    var pre = el("pre", { id: "selftest" }, JSON.stringify(out));
    document.body.appendChild(pre);
  }

  var errors = [];
  window.addEventListener("error", function (ev) { errors.push(String(ev.message)); });
  try {
    render();
  } catch (err) {
    errors.push(String(err && err.stack || err));
  }
  if (location.hash === "#selftest") selftest(errors);
})();
