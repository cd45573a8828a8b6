// Airlock console: progressive enhancement only (every page reads without it).
// - the sessions table refreshes its rows every 3 s;
// - a timeline on its live tail follows the session over SSE.
(function () {
  "use strict";

  function refreshSessions() {
    var table = document.getElementById("sessions");
    if (!table || !table.dataset.rowsUrl) return;
    setInterval(function () {
      fetch(table.dataset.rowsUrl, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var body = table.querySelector("tbody");
          if (body) body.innerHTML = html;
        })
        .catch(function () {});
    }, 3000);
  }

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function followTimeline() {
    var list = document.getElementById("timeline");
    var indicator = document.getElementById("live-indicator");
    if (!list || !list.dataset.liveUrl || !window.EventSource) return;
    var source = new EventSource(list.dataset.liveUrl);
    var setState = function (s) {
      if (indicator) { indicator.dataset.state = s; indicator.textContent = s === "live" ? "live" : "not live"; }
    };
    source.onopen = function () { setState("live"); };
    source.addEventListener("event", function (e) {
      var li = fragment(e.data);
      if (!li) return;
      var id = li.dataset.toolUseId;
      var old = id ? list.querySelector('li.tool-call[data-tool-use-id="' + CSS.escape(id) + '"]') : null;
      if (old && li.classList.contains("tool-call")) {
        old.replaceWith(li);
      } else if (!list.querySelector('li.event[data-seq="' + li.dataset.seq + '"]')) {
        list.appendChild(li);
      }
    });
    source.addEventListener("status", function (e) {
      var s = document.getElementById("session-status");
      var parts = e.data.split("\n");
      if (s) { s.dataset.status = parts[0]; s.textContent = parts[0]; }
      var r = document.getElementById("session-stop-reason");
      if (r) r.textContent = parts[1] || "";
      if (parts[0] === "terminated") { source.close(); setState("closed"); }
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) setState("closed");
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    refreshSessions();
    followTimeline();
  });
})();
