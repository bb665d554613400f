// Conveyor dashboard: live refresh of each page's #live part, confirmations for
// actions, and the overview charts drawn as inline SVG. No framework, no CDN.
(function () {
  "use strict";
  var body = document.body;
  var refreshMs = parseInt(body.getAttribute("data-refresh") || "2000", 10);
  var csrf = body.getAttribute("data-csrf") || "";
  var SVG = "http://www.w3.org/2000/svg";

  function liveEnabled() {
    var toggle = document.getElementById("live-toggle");
    return (!toggle || toggle.checked) && document.visibilityState !== "hidden";
  }

  // Ask before destructive actions (forms carrying data-confirm).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      ev.preventDefault();
    }
  });

  // -- live fragments ---------------------------------------------------------------
  var live = document.getElementById("live");
  var busy = false;
  function fragmentUrl() {
    var params = new URLSearchParams(window.location.search);
    params.delete("msg");
    params.delete("err");
    params.set("fragment", "1");
    return window.location.pathname + "?" + params.toString();
  }
  function refreshFragment() {
    if (!live || busy || !liveEnabled()) return;
    // Never swap the markup under a control the user is working with.
    if (live.contains(document.activeElement) && document.activeElement !== body) return;
    busy = true;
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (resp) {
        if (resp.redirected && resp.url.indexOf("/login") !== -1) {
          window.location.reload(); // the session ended: show the login page
          return null;
        }
        // 503: the broker is down, and the fragment says so (and retries).
        return resp.ok || resp.status === 503 ? resp.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined && html !== live.innerHTML) {
          // Keep folded sections the user opened (offline workers) open.
          var open = Array.prototype.map.call(live.querySelectorAll("details[id][open]"), function (d) { return d.id; });
          live.innerHTML = html;
          open.forEach(function (id) {
            var again = document.getElementById(id);
            if (again) again.open = true;
          });
          live.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () { /* offline for a moment: try again on the next tick */ })
      .then(function () { busy = false; });
  }

  // -- charts -----------------------------------------------------------------------
  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function hhmm(ts) {
    var d = new Date(ts * 1000);
    return ("0" + d.getUTCHours()).slice(-2) + ":" + ("0" + d.getUTCMinutes()).slice(-2);
  }
  function drawChart(container, series, kind) {
    var W = 600, H = 180, L = 40, R = 8, T = 10, B = 22;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, class: "chart-svg", "data-points": String(series.length) });
    var values = series.map(function (b) {
      var total = b.succeeded + b.failed;
      return kind === "failures" ? (total ? (100 * b.failed) / total : 0) : total;
    });
    var max = kind === "failures" ? 100 : Math.max(1, Math.max.apply(null, values.concat([0])));
    var plotW = W - L - R, plotH = H - T - B;
    [0, 0.5, 1].forEach(function (f) {
      var y = T + plotH * (1 - f);
      svg.appendChild(el("line", { x1: L, x2: W - R, y1: y, y2: y, class: "gridline" }));
      var label = kind === "failures" ? Math.round(max * f) + "%" : String(Math.round(max * f));
      svg.appendChild(el("text", { x: L - 4, y: y + 4, class: "axis", "text-anchor": "end" }, label));
    });
    var n = Math.max(series.length, 1), step = plotW / n;
    if (kind === "throughput") {
      series.forEach(function (b, i) {
        var x = L + i * step + step * 0.1, w = Math.max(step * 0.8, 1);
        var hOk = (plotH * b.succeeded) / max, hBad = (plotH * b.failed) / max;
        if (hOk > 0) svg.appendChild(el("rect", { x: x, y: T + plotH - hOk, width: w, height: hOk, class: "ok" }));
        if (hBad > 0) svg.appendChild(el("rect", { x: x, y: T + plotH - hOk - hBad, width: w, height: hBad, class: "bad" }));
      });
    } else {
      var points = values.map(function (v, i) {
        return (L + i * step + step / 2).toFixed(1) + "," + (T + plotH * (1 - v / max)).toFixed(1);
      });
      if (points.length) svg.appendChild(el("polyline", { points: points.join(" "), class: "line bad" }));
    }
    if (series.length) {
      svg.appendChild(el("text", { x: L, y: H - 6, class: "axis" }, hhmm(series[0].ts)));
      svg.appendChild(el("text", { x: W - R, y: H - 6, class: "axis", "text-anchor": "end" }, hhmm(series[series.length - 1].ts) + " UTC"));
    } else {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, class: "axis", "text-anchor": "middle" }, "no task events yet"));
    }
    container.replaceChildren(svg);
  }
  var charts = document.querySelectorAll("[data-chart]");
  function refreshCharts() {
    if (!charts.length || !liveEnabled()) return;
    fetch("/api/overview", { credentials: "same-origin" })
      .then(function (resp) { return resp.ok ? resp.json() : null; })
      .then(function (data) {
        if (!data) return;
        charts.forEach(function (c) { drawChart(c, data.series || [], c.getAttribute("data-chart")); });
      })
      .catch(function () {});
  }

  // Buttons for fetch-driven actions (data-action="/api/..."), used by scripts
  // embedding the dashboard; the pages themselves post plain forms.
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest && ev.target.closest("[data-action]");
    if (!btn) return;
    ev.preventDefault();
    fetch(btn.getAttribute("data-action"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: btn.getAttribute("data-body") || "{}",
    }).then(function () { refreshFragment(); });
  });

  refreshCharts();
  if (refreshMs > 0) {
    window.setInterval(refreshFragment, refreshMs);
    window.setInterval(refreshCharts, Math.max(refreshMs, 5000));
  }
})();
