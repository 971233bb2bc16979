/* amortbench leaderboard page: sortable, filterable tables and Plotly plots. No dependencies
 * besides Plotly (loaded from plotly.min.js beside the page) for the plots.
 *
 * Tables: every <td> carries its sort key as data-sort-type ("n" number, "s" string, "x" missing)
 * and data-sort. Clicking a header sorts ascending, clicking it again descending, and so on;
 * missing values stay last in both directions, ties keep the original row order.
 * The filter box keeps rows whose displayed text contains the typed text (case-insensitive).
 */
(function () {
  "use strict";

  var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function cellKey(td) {
    var type = td ? td.getAttribute("data-sort-type") : "x";
    if (type === "n") return { missing: false, num: true, value: parseFloat(td.getAttribute("data-sort")) };
    if (type === "s") return { missing: false, num: false, value: td.getAttribute("data-sort") };
    return { missing: true };
  }

  /* Compare two keys in the given direction (1 ascending, -1 descending); missing always last,
   * numbers before strings. */
  function compareKeys(a, b, dir) {
    if (a.missing || b.missing) return (a.missing ? 1 : 0) - (b.missing ? 1 : 0);
    if (a.num !== b.num) return a.num ? -1 : 1;
    var c = a.num ? (a.value < b.value ? -1 : a.value > b.value ? 1 : 0) : collator.compare(a.value, b.value);
    return c * dir;
  }

  function initTable(block) {
    var table = block.querySelector("table.sortable");
    var tbody = table.tBodies[0];
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var rows = Array.prototype.slice.call(tbody.rows).map(function (tr, index) {
      var keys = Array.prototype.map.call(tr.cells, cellKey);
      return { tr: tr, index: index, keys: keys, text: tr.textContent.toLowerCase() };
    });
    var filter = block.querySelector("input.table-filter");
    var count = block.querySelector(".row-count");
    var noMatch = block.querySelector(".no-match");
    var state = { column: -1, dir: 1 };

    function sortBy(column) {
      state.dir = state.column === column ? -state.dir : 1;
      state.column = column;
      var dir = state.dir;
      var ordered = rows.slice().sort(function (a, b) {
        return compareKeys(a.keys[column], b.keys[column], dir) || a.index - b.index;
      });
      ordered.forEach(function (r) { tbody.appendChild(r.tr); });
      headers.forEach(function (th, i) {
        th.setAttribute("aria-sort", i !== column ? "none" : dir > 0 ? "ascending" : "descending");
        th.querySelector(".arrow").textContent = i !== column ? "" : dir > 0 ? "\u25B2" : "\u25BC";
      });
    }

    function applyFilter() {
      var query = filter.value.trim().toLowerCase();
      var shown = 0;
      rows.forEach(function (r) {
        var hide = query !== "" && r.text.indexOf(query) === -1;
        r.tr.hidden = hide;
        if (!hide) shown += 1;
      });
      var total = rows.length + (rows.length === 1 ? " row" : " rows");
      count.textContent = query === "" ? total : shown + " of " + total;
      noMatch.hidden = shown !== 0 || rows.length === 0;
    }

    headers.forEach(function (th, i) {
      th.querySelector("button.sort").addEventListener("click", function () { sortBy(i); });
    });
    filter.addEventListener("input", applyFilter);
    applyFilter();
  }

  /* JSON has no NaN: a null end of an error bar means "no bar", which Plotly spells NaN. */
  function nullsToNaN(trace) {
    ["error_x", "error_y"].forEach(function (axis) {
      var bars = trace[axis];
      if (!bars) return;
      ["array", "arrayminus"].forEach(function (key) {
        if (bars[key]) bars[key] = bars[key].map(function (v) { return v === null ? NaN : v; });
      });
    });
  }

  function initPlot(script) {
    var div = document.getElementById(script.getAttribute("data-target"));
    if (!div) return;
    if (typeof window.Plotly === "undefined") {
      div.classList.add("plot-missing");
      div.textContent = "plot unavailable: plotly.min.js was not found beside this page";
      return;
    }
    var figure = JSON.parse(script.textContent);
    figure.data.forEach(nullsToNaN);
    window.Plotly.newPlot(div, figure.data, figure.layout, figure.config).then(function () {
      div.setAttribute("data-drawn", "true");  /* a hook for tests and scripts that wait for plots */
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll(".table-block"), initTable);
  Array.prototype.forEach.call(document.querySelectorAll("script.plot-data"), initPlot);
})();
