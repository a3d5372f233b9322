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
    // All or none at once; a head button then adds or removes one.
    [["all", true], ["none", false]].forEach(function (pair) {
      var b = el("button", { "class": "heads-" + pair[0], title: pair[0] + " heads" }, pair[0]);
      b.onclick = function () { state.heads = e.heads.map(function () { return pair[1]; }); render(); };
      hs.appendChild(b);
    });
  }

  // Row height of the head view: the whole input fits in about 1,100 px (512 tokens
  // at 18 px were 9,000 px tall), labels thinned out where rows are too low for text.
  function rows(n) {
    var h = Math.max(2, Math.min(18, Math.floor(1100 / Math.max(1, n))));
    return { h: h, every: Math.max(1, Math.ceil(11 / h)) };
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
    var e = D[state.entry], n = e.tokens.length, r = rows(n), rowH = r.h, width = 520;
    var box = document.getElementById("headview");
    box.textContent = "";
    if (e.truncated) {
      box.appendChild(el("p", { "class": "cut" }, "The text went on: the model stopped reading after these " +
        n + " tokens (its length), at the red line."));
    }
    var s = svg("svg", { width: width, height: n * rowH + 10, id: "heads-svg" });
    var lines = svg("g", { id: "lines" });
    s.appendChild(lines);
    if (e.truncated) {
      s.appendChild(svg("line", { "class": "cut", x1: 0, x2: width, y1: n * rowH + 4, y2: n * rowH + 4 }));
    }
    for (var side = 0; side < 2; side++) {
      e.tokens.forEach(function (tok, i) {
        if (i % r.every && i !== n - 1) return;
        var t = svg("text", {
          x: side ? width - 140 : 140, y: i * rowH + Math.min(14, rowH * r.every - 1),
          "text-anchor": side ? "start" : "end", "font-size": Math.min(13, rowH * r.every - 1),
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
    var e = D[state.entry], n = e.tokens.length, rowH = rows(n).h, width = 520;
    while (g.firstChild) g.removeChild(g.firstChild);
    e.heads.forEach(function (h, hi) {
      if (!state.heads[hi]) return;
      for (var q = 0; q < n; q++) {
        if (state.hover !== null && state.hover !== q) continue;
        for (var k = 0; k < n; k++) {
          var w = weight(e, state.layer, hi, q, k);
          if (w < THRESHOLD) continue;
          g.appendChild(svg("line", {
            "class": "att", x1: 146, y1: q * rowH + rowH / 2, x2: width - 146, y2: k * rowH + rowH / 2,
            stroke: COLORS[hi % COLORS.length], "stroke-width": 2,
            "stroke-opacity": Math.min(1, w).toFixed(3), "data-q": q, "data-k": k, "data-w": w
          }));
        }
      }
    });
  }

  // Heat map of the chosen layer and the first chosen head: token labels on both axes
  // (thinned out on long inputs), the weight under the pointer, and the colour scale.
  function heatmap() {
    var e = D[state.entry], n = e.tokens.length;
    var box = document.getElementById("heatmap");
    box.textContent = "";
    var hi = state.heads.indexOf(true);
    if (hi < 0) {
      box.appendChild(el("p", {}, "Pick a head above to see its heat map."));
      return;
    }
    var cell = Math.max(1, Math.min(24, Math.floor(480 / Math.max(1, n))));
    var side = cell * n, every = Math.max(1, Math.ceil(12 / cell)), label = 110;
    box.appendChild(el("p", { id: "heatmap-title" }, "Layer " + e.layers[state.layer] + ", head " + e.heads[hi] +
      (n > 1 && every > 1 ? " (every " + every + "th token labelled)" : "")));
    var wrap = el("div", { "class": "heat" });
    var c = el("canvas", { id: "heatmap-canvas", width: side, height: side });
    var ctx = c.getContext("2d");
    for (var q = 0; q < n; q++) for (var k = 0; k < n; k++) {
      ctx.fillStyle = shade(weight(e, state.layer, hi, q, k));
      ctx.fillRect(k * cell, q * cell, cell, cell);
    }
    var s = svg("svg", { width: side + label, height: side + label, "class": "axes" });
    e.tokens.forEach(function (tok, i) {
      if (i % every) return;
      var y = svg("text", { x: label - 4, y: label + i * cell + cell / 2 + 4, "text-anchor": "end", "class": "token" });
      y.textContent = tok;
      s.appendChild(y);
      var x = svg("text", { x: 0, y: 0, "text-anchor": "start", "class": "token",
        transform: "translate(" + (label + i * cell + cell / 2 + 4) + "," + (label - 4) + ") rotate(-90)" });
      x.textContent = tok;
      s.appendChild(x);
    });
    c.style.left = label + "px";
    c.style.top = label + "px";
    var value = el("div", { id: "heatmap-value", "class": "num" }, "Point at a cell.");
    c.onmousemove = function (ev) {
      var rect = c.getBoundingClientRect();
      var k = Math.floor((ev.clientX - rect.left) / cell), q = Math.floor((ev.clientY - rect.top) / cell);
      if (q < 0 || k < 0 || q >= n || k >= n) return;
      value.textContent = e.tokens[q] + " (" + q + ") attends to " + e.tokens[k] + " (" + k + "): " +
        weight(e, state.layer, hi, q, k).toFixed(3);
    };
    wrap.appendChild(s);
    wrap.appendChild(c);
    box.appendChild(wrap);
    box.appendChild(value);
    var legend = el("div", { "class": "legend" });
    legend.appendChild(el("span", {}, "0 "));
    var scale = el("canvas", { width: 200, height: 10 });
    var lctx = scale.getContext("2d");
    for (var x = 0; x < 200; x++) { lctx.fillStyle = shade(x / 199); lctx.fillRect(x, 0, 1, 10); }
    legend.appendChild(scale);
    legend.appendChild(el("span", {}, " 1"));
    box.appendChild(legend);
  }
  function shade(w) {
    var v = 255 - Math.round(255 * Math.max(0, Math.min(1, w)));
    return "rgb(" + v + "," + v + ",255)";
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
    // One head at first: all of them drawn at once were a tangle.
    if (!state.heads) state.heads = e.heads.map(function (_, j) { return j === 0; });
    if (state.layer >= e.layers.length) state.layer = 0;
    selectors();
    prediction();
    headView();
    heatmap();
    modelView();
    rollout();
  }

  // `#selftest` in the URL: the page checks itself and writes what it found into
  // <pre id="selftest">, for a headless browser to read (tests/suite/attention_view.rs).
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
      state.heads = null; state.layer = 0;
      render();
      out.initialHeads = state.heads.filter(function (h) { return h; }).length;
      out.heatmap = !!document.getElementById("heatmap-canvas");
      out.heatmapLabels = document.querySelectorAll("#heatmap svg text.token").length;
      out.legend = document.querySelectorAll("#heatmap .legend canvas").length;
      out.cutMarked = document.querySelectorAll("#heads-svg line.cut").length;
      out.truncated = !!e.truncated;
      out.svgHeight = +document.getElementById("heads-svg").getAttribute("height");
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
