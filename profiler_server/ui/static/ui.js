// fbnet-lut pages: in-place sorting and filtering of tables. Vendored, no dependency, no other host.
// Without JavaScript the same links and forms sort and filter on the server.
"use strict";
(function () {
  function cellValue(row, i, numeric) {
    var td = row.cells[i];
    var raw = td.hasAttribute("data-v") ? td.getAttribute("data-v") : td.textContent.trim();
    if (!numeric) return raw.toLowerCase();
    var x = parseFloat(raw);
    return isNaN(x) ? null : x;
  }
  function sortBy(table, th) {
    var i = th.cellIndex, numeric = th.getAttribute("data-sort") === "num";
    var desc = th.getAttribute("aria-sort") === "ascending";
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, i, numeric), y = cellValue(b, i, numeric);
      if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);  // empty cells last
      return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", desc ? "descending" : "ascending");
  }
  function filterRows(table, text) {
    var needle = text.trim().toLowerCase(), shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      r.hidden = needle !== "" && r.textContent.toLowerCase().indexOf(needle) < 0;
      shown += r.hidden ? 0 : 1;
    });
    document.querySelectorAll("[data-count-for='" + table.id + "']").forEach(function (el) { el.textContent = shown; });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable th[data-sort]").forEach(function (th) {
      th.classList.add("js-sort");
      th.addEventListener("click", function (ev) {
        ev.preventDefault();
        sortBy(th.closest("table"), th);
      });
    });
    document.querySelectorAll("input[data-filter]").forEach(function (input) {
      var table = document.getElementById(input.getAttribute("data-filter"));
      if (!table) return;
      input.addEventListener("input", function () { filterRows(table, input.value); });
    });
  });
})();
