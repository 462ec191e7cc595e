/* Console behaviour without a build step: sortable tables, ECharts from embedded JSON, htmx hooks.

   A chart is an element with data-chart="<id of a <script type=application/json>>" holding an
   ECharts option, or data-chart-src="<url>" answering one as JSON. Times in options are already
   shifted to campus local time and drawn with useUTC, so the browser's own time zone never matters.
   After init the element gets data-series="<number of series>" (the browser tests read it). */
(function () {
  "use strict";
  var charts = [];
  var lang = document.body ? document.body.getAttribute("data-lang") : "zh";

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  function draw(el, option) {
    if (!window.echarts) { return null; }
    var old = window.echarts.getInstanceByDom(el);
    if (old) { old.dispose(); }
    var chart = window.echarts.init(el, null, { locale: lang === "en" ? "EN" : "ZH" });
    option.useUTC = true;
    chart.setOption(option);
    el.setAttribute("data-series", String((option.series || []).length));
    charts.push(chart);
    return chart;
  }

  function initCharts(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      var src = document.getElementById(el.getAttribute("data-chart"));
      if (src) { draw(el, JSON.parse(src.textContent)); }
    });
    (root || document).querySelectorAll("[data-chart-src]").forEach(function (el) {
      fetch(el.getAttribute("data-chart-src"), { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (opt) { draw(el, opt); })
        .catch(function () { el.setAttribute("data-error", "1"); el.textContent = el.getAttribute("data-error-text") || "!"; });
    });
  }

  function cellValue(row, i) {
    var c = row.children[i];
    if (!c) { return ""; }
    var v = c.getAttribute("data-v");
    return v === null ? c.textContent.trim() : v;
  }

  function sortBy(th) {
    var table = th.closest("table");
    var tbody = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-sort") === "n";
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(tbody.rows).filter(function (r) { return !r.classList.contains("total"); });
    var fixed = Array.prototype.slice.call(tbody.rows).filter(function (r) { return r.classList.contains("total"); });
    rows.sort(function (a, b) {
      var x = cellValue(a, i), y = cellValue(b, i);
      if (numeric) {
        var nx = x === "" ? NaN : Number(x), ny = y === "" ? NaN : Number(y);
        if (isNaN(nx) && isNaN(ny)) { return 0; }
        if (isNaN(nx)) { return 1; }   /* no value sorts last either way */
        if (isNaN(ny)) { return -1; }
        return asc ? nx - ny : ny - nx;
      }
      return asc ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.concat(fixed).forEach(function (r) { tbody.appendChild(r); });
  }

  document.addEventListener("click", function (ev) {
    var th = ev.target.closest && ev.target.closest("table.sortable th[data-sort]");
    if (th) { sortBy(th); }
  });
  document.addEventListener("DOMContentLoaded", function () { initCharts(document); });
  document.addEventListener("htmx:afterSwap", function (ev) { initCharts(ev.target); });
  /* A form marked data-inline-errors shows a refusal (422/409) where a success would go. */
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var st = ev.detail.xhr.status, elt = ev.detail.elt;
    if ((st === 422 || st === 409) && elt && elt.closest && elt.closest("[data-inline-errors]")) {
      ev.detail.shouldSwap = true;
      ev.detail.isError = false;
    }
  });
  function resizeAll() { charts.forEach(function (c) { if (!c.isDisposed()) { c.resize(); } }); }
  window.addEventListener("resize", resizeAll);
  window.addEventListener("beforeprint", resizeAll);  /* charts take the printed page's width */
  window.addEventListener("afterprint", resizeAll);

  window.CampusConsole = { initCharts: initCharts, draw: draw, csrf: csrf, charts: charts };
})();
