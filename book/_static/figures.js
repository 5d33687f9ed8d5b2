/* The book's figures follow the page: dark or light with the theme, reflowed at phone width.
 *
 * Every figure is drawn by plotly.js from the figure JSON a chapter produced, in the light style of
 * spectrallab.widgets.plots. This script, loaded on every page (book/_ext/figure_theme.py), then
 *
 * - repaints each figure for the theme: sphinx-book-theme (pydata-sphinx-theme) keeps the theme in
 *   <html data-theme="dark|light"> and its button flips it, so a MutationObserver repaints every
 *   figure on each change — backgrounds, fonts, grid and axis lines, tables, black traces — and
 *   restores the figure's own values when the page turns light again;
 * - keeps log axes readable whatever drew them: decades only (every 2nd, 3rd ... when there are many),
 *   as powers of ten, or a few plain values when the axis spans less than two decades;
 * - below PHONE px of figure width moves a legend from the right to below the plot, wraps a long title
 *   and stacks the panels of a multi-panel figure one above the other (restored when wide again).
 *
 * Each figure records what it has applied in data-sl-theme and data-sl-narrow (the browser tests wait
 * on them). Nothing here loads anything: the Plotly global comes with the page.
 */
// -- series colours for the dark theme ---------------------------------------------------------
// plots.palette and plots.readable make every series colour read on white (>= 3:1, WCAG contrast);
// many of them (the dark blue of the palette's first entry, viridis's dark end) are then too dark for
// the dark background. darkVariant(colour, background) keeps the hue and saturation and raises the
// lightness until the colour reads at DARK_CONTRAST against it (4.5:1, the level for text: point
// labels and legend-coloured annotations are drawn in these colours). Plain functions, so
// tests/test_plots.py can run them in node.
var spectrallabColours = (function () {
  "use strict";
  var DARK_CONTRAST = 4.5;

  function parse(colour) {
    var text = String(colour).trim().toLowerCase();
    var m = text.match(/^#([0-9a-f]{3}|[0-9a-f]{6})$/);
    if (m) {
      var hex = m[1].length === 3 ? m[1].replace(/(.)/g, "$1$1") : m[1];
      return [0, 2, 4].map(function (i) { return parseInt(hex.slice(i, i + 2), 16); });
    }
    m = text.match(/^rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*([\d.]+)\s*)?\)$/);
    if (m) return m[4] !== undefined && parseFloat(m[4]) === 0 ? null : [1, 2, 3].map(function (i) { return Math.round(parseFloat(m[i])); });
    if (typeof document !== "undefined") { // a CSS name ("lightgray"): the canvas writes it as #rrggbb
      var probe = document.createElement("canvas").getContext("2d");
      probe.fillStyle = "#010203";
      probe.fillStyle = text;
      if (probe.fillStyle !== "#010203" || text === "#010203") return parse(probe.fillStyle);
    }
    return null;
  }

  function luminance(c) {
    var lin = c.map(function (v) { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  }

  function contrast(a, b) {
    var x = luminance(a), y = luminance(b);
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
  }

  function toHsl(c) {
    var r = c[0] / 255, g = c[1] / 255, b = c[2] / 255;
    var max = Math.max(r, g, b), min = Math.min(r, g, b), l = (max + min) / 2, h = 0, s = 0;
    if (max !== min) {
      var d = max - min;
      s = l > 0.5 ? d / (2 - max - min) : d / (max + min);
      h = max === r ? (g - b) / d + (g < b ? 6 : 0) : max === g ? (b - r) / d + 2 : (r - g) / d + 4;
      h /= 6;
    }
    return [h, s, l];
  }

  function fromHsl(h, s, l) {
    function hue(p, q, t) {
      if (t < 0) t += 1;
      if (t > 1) t -= 1;
      if (t < 1 / 6) return p + (q - p) * 6 * t;
      if (t < 1 / 2) return q;
      if (t < 2 / 3) return p + (q - p) * (2 / 3 - t) * 6;
      return p;
    }
    if (s === 0) return [l, l, l].map(function (v) { return Math.round(255 * v); });
    var q = l < 0.5 ? l * (1 + s) : l + s - l * s, p = 2 * l - q;
    return [hue(p, q, h + 1 / 3), hue(p, q, h), hue(p, q, h - 1 / 3)].map(function (v) { return Math.round(255 * v); });
  }

  // The colour to draw instead of `colour` on the dark `background`: itself when it already reads
  // there, else a lighter one of the same hue; unparseable colours come back as they are.
  function darkVariant(colour, background) {
    var c = parse(colour), bg = parse(background);
    if (!c || !bg || contrast(c, bg) >= DARK_CONTRAST) return colour;
    var hsl = toHsl(c), out = c;
    for (var l = hsl[2]; l <= 1; l += 0.01) {
      out = fromHsl(hsl[0], hsl[1], Math.min(1, l));
      if (contrast(out, bg) >= DARK_CONTRAST) break;
    }
    return "rgb(" + out.join(", ") + ")";
  }

  return { parse: parse, contrast: contrast, darkVariant: darkVariant, DARK_CONTRAST: DARK_CONTRAST };
})();
if (typeof module === "object" && module.exports) module.exports = spectrallabColours;

(function () {
  "use strict";
  if (typeof document === "undefined") return; // (loaded in node by the tests, for its colours only)

  var PHONE = 600; // figure width (px) below which the layout reflows
  var PANEL = 280; // height (px) of one stacked panel at phone width
  var PANEL_GAP = 90; // px between stacked panels: x tick labels, x axis title, next subplot title
  var TITLE_LINE = 26; // px per added line of a wrapped title (a little more than plots.TITLE_LINE)
  var AXIS = /^[xy]axis\d*$/;

  function pageTheme() {
    return document.documentElement.dataset.theme === "dark" ? "dark" : "light";
  }

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function darkColours() {
    return {
      background: cssVar("--pst-color-background", "#14181e"),
      surface: cssVar("--pst-color-surface", "#29313d"),
      text: cssVar("--pst-color-text-base", "#ced6dd"),
      grid: "#333c47",
      line: "#5d6873",
    };
  }

  // -- reading and writing layout paths like "annotations[2].font.color" --------------------------
  function get(obj, path) {
    var parts = path.replace(/\[(\d+)\]/g, ".$1").split(".");
    for (var i = 0; i < parts.length; i++) {
      if (obj === undefined || obj === null) return undefined;
      obj = obj[parts[i]];
    }
    return obj;
  }

  function copy(value) {
    return value === undefined ? null : JSON.parse(JSON.stringify(value));
  }

  function queue(gd, work) {
    gd._slChain = (gd._slChain || Promise.resolve()).then(work).catch(function (error) {
      console.warn("figures.js:", error);
    });
    return gd._slChain;
  }

  // Apply a relayout/restyle, remembering (once per slot) the values it replaces, so revert() can
  // put the figure back exactly as the chapter drew it.
  function apply(gd, slot, layout, traces) {
    var saved = gd[slot] || (gd[slot] = { layout: {}, traces: {}, heights: heights(gd) });
    Object.keys(layout).forEach(function (key) {
      if (!(key in saved.layout)) saved.layout[key] = copy(get(gd.layout, key));
    });
    Object.keys(traces).forEach(function (key) {
      if (!(key in saved.traces)) {
        saved.traces[key] = gd.data.map(function (trace) {
          return copy(get(trace, key));
        });
      }
    });
    var steps = [];
    if (Object.keys(traces).length) steps.push(function () { return Plotly.restyle(gd, traces); });
    if (Object.keys(layout).length) steps.push(function () { return Plotly.relayout(gd, layout); });
    return steps.reduce(function (p, step) { return p.then(step); }, Promise.resolve());
  }

  function revert(gd, slot) {
    var saved = gd[slot];
    if (!saved) return Promise.resolve();
    delete gd[slot];
    holders(gd).forEach(function (el, i) { el.style.height = saved.heights[i]; });
    var traces = saved.traces;
    return (Object.keys(traces).length ? Plotly.restyle(gd, traces) : Promise.resolve()).then(function () {
      return Object.keys(saved.layout).length ? Plotly.relayout(gd, saved.layout) : undefined;
    });
  }

  // The elements whose CSS height is the figure's: the plotly div and the div the page gave it (its
  // style says the height the chapter asked for; a stacked figure needs more).
  function holders(gd) {
    var outer = gd.parentElement;
    return outer && outer.style.height ? [gd, outer] : [gd];
  }

  function heights(gd) {
    return holders(gd).map(function (el) { return el.style.height; });
  }

  function axisNames(gd) {
    return Object.keys(gd._fullLayout).filter(function (k) { return AXIS.test(k); });
  }

  // -- dark theme ------------------------------------------------------------------------------
  var BLACK = /^(black|#000|#000000|rgb\(0, ?0, ?0\)|#111|#222|#333|#444|#555)$/i;

  function darkUpdate(gd) {
    var c = darkColours();
    var fl = gd._fullLayout;
    var layout = {
      paper_bgcolor: c.background,
      plot_bgcolor: c.background,
      "font.color": c.text,
      "title.font.color": c.text,
      "legend.font.color": c.text,
      "legend.bgcolor": "rgba(0,0,0,0)",
      "hoverlabel.bgcolor": c.surface,
      "hoverlabel.font.color": c.text,
      "modebar.bgcolor": "rgba(0,0,0,0)",
      "modebar.color": c.line,
      "modebar.activecolor": c.text,
    };
    axisNames(gd).forEach(function (name) {
      layout[name + ".gridcolor"] = c.grid;
      layout[name + ".linecolor"] = c.line;
      layout[name + ".zerolinecolor"] = c.line;
      // (only where minor grid lines are drawn: setting a minor attribute would switch them on)
      if (fl[name].minor && fl[name].minor.showgrid) layout[name + ".minor.gridcolor"] = c.grid;
      layout[name + ".tickcolor"] = c.line;
    });
    // Coloured text and lines (a line's label, a target drawn in its series' colour): the dark
    // variant of their colour, so they read on the dark background.
    var lighter = function (colour) { return spectrallabColours.darkVariant(colour, c.background); };
    (fl.annotations || []).forEach(function (a, i) {
      var own = get(gd.layout, "annotations[" + i + "].font.color");
      if (own && BLACK.test(own)) layout["annotations[" + i + "].font.color"] = c.text;
      else if (own && lighter(own) !== own) layout["annotations[" + i + "].font.color"] = lighter(own);
    });
    (fl.shapes || []).forEach(function (s, i) {
      var own = get(gd.layout, "shapes[" + i + "].line.color");
      if (own && BLACK.test(own)) layout["shapes[" + i + "].line.color"] = c.line;
      else if (own && lighter(own) !== own) layout["shapes[" + i + "].line.color"] = lighter(own);
    });
    if (fl.coloraxis) layout["coloraxis.colorbar.tickfont.color"] = c.text;

    var traces = {};
    function set(key, i, value) {
      traces[key] = traces[key] || gd.data.map(function (t) { return copy(get(t, key)); });
      traces[key][i] = value;
    }
    gd.data.forEach(function (trace, i) {
      if (trace.type === "table") {
        set("header.fill.color", i, c.surface);
        set("cells.fill.color", i, c.background);
        set("header.font.color", i, c.text);
        set("cells.font.color", i, c.text);
        set("header.line.color", i, c.line);
        set("cells.line.color", i, c.line);
        return;
      }
      ["line.color", "marker.color", "marker.line.color", "textfont.color"].forEach(function (key) {
        var value = get(trace, key);
        if (typeof value === "string" && BLACK.test(value)) set(key, i, c.text);
        // a series colour (line, markers, point labels) too dark for the background: its dark variant
        else if (trace.type === "scatter" && typeof value === "string" && lighter(value) !== value) set(key, i, lighter(value));
      });
      // a trace given no colour draws in the colorway's: set its dark variant explicitly
      if (trace.type === "scatter" && gd._fullData[i]) {
        var full = gd._fullData[i];
        if (!get(trace, "line.color") && full.line && typeof full.line.color === "string" && lighter(full.line.color) !== full.line.color) set("line.color", i, lighter(full.line.color));
        if (!get(trace, "marker.color") && full.marker && typeof full.marker.color === "string" && lighter(full.marker.color) !== full.marker.color) set("marker.color", i, lighter(full.marker.color));
        if (!get(trace, "textfont.color") && full.textfont && typeof full.textfont.color === "string" && full.mode && full.mode.indexOf("text") >= 0 && lighter(full.textfont.color) !== full.textfont.color) set("textfont.color", i, lighter(full.textfont.color));
      }
    });
    return { layout: layout, traces: traces };
  }

  function applyTheme(gd) {
    return queue(gd, function () {
      var want = pageTheme();
      if (gd.dataset.slTheme === want) return;
      var step;
      if (want === "dark") {
        var u = darkUpdate(gd);
        step = apply(gd, "_slLight", u.layout, u.traces);
      } else {
        step = revert(gd, "_slLight");
      }
      return step.then(function () { gd.dataset.slTheme = want; });
    });
  }

  // -- log axes --------------------------------------------------------------------------------
  function niceValues(lo, hi) {
    var raw = (hi - lo) / 4;
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * power; }).find(function (s) { return s >= raw; });
    var values = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi * (1 + 1e-9); v += step) {
      if (v > 0) values.push(Number(v.toPrecision(6)));
    }
    return values;
  }

  function logTicks(gd) {
    var fl = gd._fullLayout;
    var layout = {};
    axisNames(gd).forEach(function (name) {
      var ax = fl[name];
      var own = gd.layout[name] || {};
      if (ax.type !== "log" || !ax.range || own.tickmode === "array") return;
      var lo = Math.min(ax.range[0], ax.range[1]);
      var hi = Math.max(ax.range[0], ax.range[1]);
      if (Math.floor(hi) - Math.ceil(lo) + 1 >= 2) {
        var dtick = Math.max(1, Math.ceil((hi - lo) / 6));
        // Pinned in the figure's own layout, not only matched in the drawn one: plotly's automatic
        // dtick happens to be 1 at one height and "D2" (mantissas 2, 5 labelled) at another, which
        // the phone layout (taller stacked panels) would otherwise get.
        if (own.tickmode !== "linear" || own.dtick !== dtick || own.exponentformat !== "power") {
          layout[name + ".tickmode"] = "linear";
          layout[name + ".tick0"] = 0;
          layout[name + ".dtick"] = dtick;
          layout[name + ".exponentformat"] = "power";
        }
      } else {
        var values = niceValues(Math.pow(10, lo), Math.pow(10, hi));
        layout[name + ".tickmode"] = "array";
        layout[name + ".tickvals"] = values;
        layout[name + ".ticktext"] = values.map(function (v) { return String(Number(v.toPrecision(3))); });
      }
    });
    return Object.keys(layout).length ? Plotly.relayout(gd, layout) : Promise.resolve();
  }

  // -- phone width -----------------------------------------------------------------------------
  function wrapTitle(text, width, size) {
    var perLine = Math.max(16, Math.floor(width / (0.6 * size)));
    return text
      .split("<br>")
      .map(function (line) {
        var plain = line.replace(/<[^>]+>/g, "");
        if (plain.length <= perLine) return line;
        var words = line.split(" ");
        var lines = [];
        var current = "";
        words.forEach(function (word) {
          var trial = current ? current + " " + word : word;
          if (trial.replace(/<[^>]+>/g, "").length > perLine && current) {
            lines.push(current);
            current = word;
          } else {
            current = trial;
          }
        });
        if (current) lines.push(current);
        return lines.join("<br>");
      })
      .join("<br>");
  }

  // The panels of a make_subplots figure: one per x axis that is not an overlay, with its y axis.
  function panels(gd) {
    var fl = gd._fullLayout;
    var seen = {};
    var cells = [];
    axisNames(gd).forEach(function (name) {
      if (name[0] !== "x" || fl[name].overlaying || !fl[name].domain) return;
      var yName = "yaxis" + (fl[name].anchor || "y").slice(1);
      if (!fl[yName] || seen[yName]) return;
      seen[yName] = true;
      // the domains the figure asked for (a heatmap kept square shrinks its drawn domain; its subplot
      // title still sits on the asked one)
      var asked = function (n) { return ((gd.layout[n] && gd.layout[n].domain) || fl[n].domain).slice(); };
      cells.push({ x: name, y: yName, xd: asked(name), yd: asked(yName) });
    });
    cells.sort(function (a, b) { return b.yd[1] - a.yd[1] || a.xd[0] - b.xd[0]; });
    return cells;
  }

  function narrowUpdate(gd) {
    var fl = gd._fullLayout;
    var layout = {};
    var traces = {};
    function set(key, i, value) {
      traces[key] = traces[key] || gd.data.map(function (t) { return copy(get(t, key)); });
      traces[key][i] = value;
    }
    var width = gd.clientWidth;
    var legend = fl.legend;
    if (fl.showlegend && legend && legend.x > 1) {
      layout.legend = { orientation: "h", x: 0, xanchor: "left", xref: "paper", y: 0, yanchor: "bottom", yref: "container" };
    }
    // a legend entry longer than the figure is wide wraps (a horizontal legend only wraps between entries)
    if (fl.showlegend) {
      var legendSize = (legend && legend.font && legend.font.size) || 12;
      gd.data.forEach(function (trace, i) {
        if (trace.showlegend === false || !trace.name) return;
        var wrappedName = wrapTitle(String(trace.name), width - 60, legendSize);
        if (wrappedName !== trace.name) set("name", i, wrappedName);
      });
    }
    var extraTop = 0;
    var title = gd.layout.title && (gd.layout.title.text || (typeof gd.layout.title === "string" && gd.layout.title));
    if (title) {
      // the title starts at the plot's left edge (plots.style: x=0 on the paper)
      var room = width - fl.margin.l - 8;
      var wrapped = wrapTitle(title, room, (fl.title.font && fl.title.font.size) || 16);
      if (wrapped !== title) {
        layout["title.text"] = wrapped;
        var added = wrapped.split("<br>").length - title.split("<br>").length;
        extraTop = added * TITLE_LINE;
        // plotly anchors a title of several lines by its first line: move it down by the added ones,
        // or they climb into the modebar band (plots.style does the same for titles it is given)
        layout["title.pad.t"] = ((fl.title.pad && fl.title.pad.t) || 0) + Math.round(0.8 * 22 * added);
      }
    }
    var top = fl.margin.t + extraTop;
    if (extraTop) layout["margin.t"] = top;

    var cells = panels(gd);
    var columns = {};
    cells.forEach(function (c) { columns[c.xd[0].toFixed(3)] = true; });
    var height = fl.height;
    if (Object.keys(columns).length > 1) {
      var n = cells.length;
      var bottom = fl.margin.b + 60;
      height = top + bottom + n * PANEL + (n - 1) * PANEL_GAP;
      var plot = height - top - bottom;
      var gap = PANEL_GAP / plot;
      var size = (1 - gap * (n - 1)) / n;
      cells.forEach(function (c, i) {
        var y1 = 1 - i * (size + gap);
        c.newYd = [Math.max(0, y1 - size), y1];
        layout[c.x + ".domain"] = [0, 1];
        layout[c.y + ".domain"] = c.newYd;
      });
      // subplot titles: move each with its panel, the one it is centred over and nearest to above
      // (plotly may have shrunk a square heatmap's domain, so only "above it" is asked)
      (gd.layout.annotations || []).forEach(function (a, i) {
        if ((a.xref && a.xref !== "paper") || (a.yref && a.yref !== "paper")) return;
        var best = null;
        cells.forEach(function (c) {
          var centre = (c.xd[0] + c.xd[1]) / 2;
          var dy = a.y - c.yd[1];
          if (Math.abs(a.x - centre) < 0.02 && dy > -0.01 && (!best || dy < best.dy)) best = { cell: c, dy: dy };
        });
        if (best) {
          layout["annotations[" + i + "].x"] = 0.5;
          layout["annotations[" + i + "].y"] = best.cell.newYd[1];
          // a subplot title now centred over the full width wraps as the figure's title does, or
          // a long one runs past both edges of a phone's figure
          var subSize = (fl.annotations[i] && fl.annotations[i].font && fl.annotations[i].font.size) || 14;
          var wrappedSub = a.text && wrapTitle(String(a.text), width - fl.margin.l - fl.margin.r, subSize);
          if (wrappedSub && wrappedSub !== a.text) layout["annotations[" + i + "].text"] = wrappedSub;
        }
      });
      // colour bars: beside the panel of their trace
      gd.data.forEach(function (trace, i) {
        if (!trace.colorbar && trace.type !== "heatmap") return;
        var yName = "yaxis" + (trace.yaxis || "y").slice(1);
        var cell = cells.find(function (c) { return c.y === yName; });
        if (!cell) return;
        set("colorbar.x", i, 1.02);
        set("colorbar.y", i, (cell.newYd[0] + cell.newYd[1]) / 2);
        set("colorbar.yanchor", i, "middle");
        set("colorbar.len", i, cell.newYd[1] - cell.newYd[0]);
      });
      layout.height = height;
    }
    return { layout: layout, traces: traces, height: height };
  }

  // The wrapped title, measured as drawn: if its last line reaches the plot area or a subplot title
  // above it (a long title, or one with a smaller second line, wraps to more lines than the margin
  // was estimated for), the top margin and the figure grow by the overlap.
  function titleRoom(gd) {
    var title = gd.querySelector(".gtitle");
    if (!title) return undefined;
    var fl = gd._fullLayout;
    var origin = gd.getBoundingClientRect().top;
    var bottom = title.getBoundingClientRect().bottom - origin;
    var limit = fl._size.t;
    Array.prototype.forEach.call(gd.querySelectorAll(".annotation"), function (a) {
      var box = a.getBoundingClientRect();
      if (box.height && box.bottom - origin <= fl._size.t + 2) limit = Math.min(limit, box.top - origin);
    });
    var overlap = Math.ceil(bottom + 6 - limit);
    if (overlap <= 0) return undefined;
    var height = fl.height + overlap;
    return apply(gd, "_slWide", { "margin.t": fl.margin.t + overlap, height: height }, {}).then(function () {
      holders(gd).forEach(function (el) { el.style.height = height + "px"; });
    });
  }

  function applyWidth(gd) {
    return queue(gd, function () {
      var narrow = gd.clientWidth > 0 && gd.clientWidth < PHONE;
      var want = narrow ? "yes" : "no";
      if (gd.dataset.slNarrow === want) return;
      var step;
      if (narrow) {
        var u = narrowUpdate(gd);
        step = apply(gd, "_slWide", u.layout, u.traces)
          .then(function () {
            holders(gd).forEach(function (el) { el.style.height = u.height + "px"; });
          })
          .then(function () { return titleRoom(gd); });
      } else {
        step = revert(gd, "_slWide");
      }
      return step.then(function () { gd.dataset.slNarrow = want; });
    });
  }

  // -- driving it ------------------------------------------------------------------------------
  function figures() {
    return Array.prototype.slice.call(document.querySelectorAll(".js-plotly-plot"));
  }

  function prepare(gd) {
    if (gd._slReady || !gd._fullLayout) return;
    gd._slReady = true;
    // Log ticks first (they depend on the drawn range), then width, then theme.
    queue(gd, function () { return logTicks(gd); });
    applyWidth(gd);
    applyTheme(gd);
  }

  function prepareAll() {
    if (typeof Plotly === "undefined") return;
    figures().forEach(prepare);
  }

  // Figures are drawn by inline scripts as the page loads; pick them up as they appear.
  var polls = 0;
  function poll() {
    prepareAll();
    if (++polls < 100) setTimeout(poll, 200);
  }

  new MutationObserver(function () {
    figures().forEach(function (gd) {
      if (gd._slReady) applyTheme(gd);
    });
  }).observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });

  var resizing;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      figures().forEach(function (gd) {
        if (gd._slReady) applyWidth(gd);
      });
    }, 200);
  });

  // for a person (or a test) at the console
  window.spectrallabFigures = { panels: panels, narrowUpdate: narrowUpdate, darkUpdate: darkUpdate };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", poll);
  } else {
    poll();
  }
})();
