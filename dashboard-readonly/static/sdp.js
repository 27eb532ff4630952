// SDP dashboard: live updates without reloads. Plain JS, no build step.
(function () {
  "use strict";
  var base = document.body.dataset.base || "";

  // A deployment's log: follow it over SSE; EventSource resumes from Last-Event-ID by itself after a reconnect,
  // so no line is lost. Auto-scroll stops while the reader has scrolled up, and resumes at the bottom.
  var log = document.getElementById("log");
  if (log) {
    var follow = true;
    log.addEventListener("scroll", function () {
      follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    });
    var source = new EventSource(base + "/api/v1/deployments/" + log.dataset.id + "/logs");
    source.onmessage = function (e) {
      var line = document.createElement("div");
      line.textContent = e.data;
      log.appendChild(line);
      if (follow) { log.scrollTop = log.scrollHeight; }
    };
    source.addEventListener("end", function () {
      source.close();
      var done = document.createElement("div");
      done.className = "muted";
      done.textContent = "— end of log —";
      log.appendChild(done);
    });
  }

  // A container's output on the sandbox page: followed over SSE from when the reader opens it, until it closes.
  document.querySelectorAll("details[data-logs]").forEach(function (el) {
    var out = el.querySelector(".log");
    var source = null;
    var follow = true;
    out.addEventListener("scroll", function () {
      follow = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    });
    el.addEventListener("toggle", function () {
      if (!el.open) {
        if (source) { source.close(); source = null; }
        return;
      }
      out.textContent = "";
      source = new EventSource(base + "/api/v1/sandboxes/" + encodeURIComponent(el.dataset.sandbox) + "/logs/" +
        encodeURIComponent(el.dataset.logs) + "?follow=true");
      source.onmessage = function (e) {
        var line = document.createElement("div");
        line.textContent = e.data;
        out.appendChild(line);
        while (out.childNodes.length > 2000) { out.removeChild(out.firstChild); }
        if (follow) { out.scrollTop = out.scrollHeight; }
      };
    });
  });

  // A repository's branches, listed by its agent when the reader opens it (nodes page).
  document.querySelectorAll("details[data-branches]").forEach(function (el) {
    el.addEventListener("toggle", function () {
      if (!el.open || el.dataset.listed) { return; }
      el.dataset.listed = "1";
      var out = el.querySelector("span");
      fetch(base + "/api/v1/repos/" + encodeURIComponent(el.dataset.branches) + "/branches")
        .then(function (r) { return r.json(); })
        .then(function (doc) {
          if (doc.error) { out.textContent = doc.error; out.className = "error"; return; }
          out.className = "";
          out.textContent = "";
          doc.branches.forEach(function (b) {
            var line = document.createElement("div");
            line.className = "mono";
            line.textContent = b.branch + "  " + b.commit.slice(0, 12);
            out.appendChild(line);
          });
        })
        .catch(function (e) { out.textContent = String(e); });
    });
  });

  // Pages that show status refresh their live parts from the server's rendering of them, when the reconciler
  // says something changed (SSE), and every 30 s besides.
  var live = document.querySelectorAll("[data-live]");
  if (live.length) {
    var refresh = function () {
      fetch(window.location.href)
        .then(function (r) {
          // The session ended (logout elsewhere, 12 h passed, the reconciler restarted): to the login form.
          if (r.redirected && r.url.indexOf("/login") >= 0) { window.location.href = r.url; }
          return r.text();
        })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          live.forEach(function (el) {
            var fresh = doc.querySelector('[data-live="' + el.dataset.live + '"]');
            if (fresh && fresh.innerHTML !== el.innerHTML) { el.innerHTML = fresh.innerHTML; }
          });
        })
        .catch(function () {});
    };
    var changes = new EventSource(base + "/api/v1/changes");
    changes.addEventListener("changed", refresh);
    setInterval(refresh, 30000);
  }
})();
