// backstop's on-call page: new records appear while the page is open. Server-sent events from
// GET /v1/audit/stream (the page's own server; the browser sends its credentials), filtered to
// what the page shows. Rows are built with textContent only: nothing from a record is ever
// parsed as HTML.
"use strict";
(function () {
  var table = document.querySelector("table.live tbody");
  if (!table) { return; }
  var main = document.querySelector("main");
  var filter = main.getAttribute("data-stream") || "";
  var after = main.getAttribute("data-after") || "";
  var url = "/v1/audit/stream?" + filter + (after ? (filter ? "&" : "") + "after=" + encodeURIComponent(after) : "");
  var status = document.getElementById("live");
  var source = new EventSource(url);
  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) {
      var span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      td.appendChild(span);
    } else {
      td.textContent = text;
    }
    row.appendChild(td);
    return td;
  }
  function link(row, id) {
    var td = document.createElement("td");
    if (id) {
      var a = document.createElement("a");
      a.href = "/ui/actions/" + encodeURIComponent(id);
      a.textContent = id.slice(0, 13);
      td.appendChild(a);
    }
    row.appendChild(td);
  }
  source.onopen = function () { if (status) { status.textContent = "live"; } };
  source.onerror = function () { if (status) { status.textContent = "reconnecting…"; } };
  source.onmessage = null;
  var kinds = ["received", "rejected", "matched", "decided", "held", "applied", "noop", "refused", "failed",
    "dry_run", "control", "recovered", "verified", "unverified", "promoted"];
  kinds.forEach(function (kind) {
    source.addEventListener(kind, function (e) {
      var r;
      try { r = JSON.parse(e.data); } catch (err) { return; }
      var row = document.createElement("tr");
      row.className = "new";
      cell(row, String(r.seq));
      cell(row, String(r.time));
      cell(row, String(r.kind), "kind " + String(r.kind));
      cell(row, r.rule ? String(r.rule) : "");
      // A delivery's received record names its alerts in its detail (one, or how many).
      var alerts = (!r.event_id && r.detail && Array.isArray(r.detail.alerts)) ? r.detail.alerts : [];
      var event = r.event_id ? String(r.event_id)
        : alerts.length === 1 ? String(alerts[0].id) : alerts.length > 1 ? alerts.length + " alerts" : "";
      if (r.action_id) { link(row, String(r.action_id)); } else { cell(row, event); }
      cell(row, "");
      cell(row, r.reason ? String(r.reason) : "");
      table.insertBefore(row, table.firstChild);
    });
  });
})();
