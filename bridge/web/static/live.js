// Keeps the overview current without a reload: every few seconds it reads
// /overview.json (the same figures the page was rendered with) and puts them in
// place. Text goes in with textContent only, so nothing from the data is ever
// parsed as HTML.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function cell(data) {
    var td = document.createElement("td");
    var inner = td;
    if (data.href) {
      inner = document.createElement("a");
      inner.href = data.href;
      td.appendChild(inner);
    } else if (data["class"]) {
      inner = document.createElement("span");
      inner.className = data["class"];
      td.appendChild(inner);
    }
    inner.textContent = data.text;
    return td;
  }

  function fill(tbody, rows) {
    var fresh = document.createElement("tbody");
    fresh.id = tbody.id;
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      row.forEach(function (data) { tr.appendChild(cell(data)); });
      fresh.appendChild(tr);
    });
    tbody.parentNode.replaceChild(fresh, tbody);
  }

  function apply(data) {
    Object.keys(data.figures).forEach(function (key) {
      document.querySelectorAll('[data-live="' + key + '"]').forEach(function (el) {
        el.textContent = data.figures[key];
      });
    });
    Object.keys(data.tables).forEach(function (id) {
      var tbody = document.getElementById(id);
      if (tbody) { fill(tbody, data.tables[id]); }
    });
    document.body.setAttribute("data-refreshed", String(Date.now()));
  }

  function poll() {
    fetch("/overview.json", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(apply)
      .catch(function () { /* keep what is shown; try again next time */ })
      .then(function () { setTimeout(poll, PERIOD_MS); });
  }

  setTimeout(poll, PERIOD_MS);
})();
