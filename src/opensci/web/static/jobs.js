// A job's page: follow its log live (server-sent events from the API) and say when it ends.
// Without this script the page shows the log as it was when the page was made.
(function () {
  "use strict";

  function follow(pre) {
    var url = pre.getAttribute("data-follow");
    var offset = Number(pre.getAttribute("data-offset") || "0");
    var empty = document.getElementById("job-log-empty");
    var ended = false;
    var source = null;

    function atBottom() {
      return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    }

    function open() {
      source = new EventSource(url + (url.indexOf("?") < 0 ? "?" : "&") + "offset=" + offset);
      source.addEventListener("log", function (event) {
        var data = JSON.parse(event.data);
        if (data.offset <= offset) return;
        var stick = atBottom();
        pre.appendChild(document.createTextNode(data.text));
        offset = data.offset;
        pre.setAttribute("data-offset", String(offset));
        if (empty) { empty.hidden = true; }
        if (stick) { pre.scrollTop = pre.scrollHeight; }
      });
      source.addEventListener("end", function (event) {
        ended = true;
        source.close();
        var data = JSON.parse(event.data);
        pre.setAttribute("data-status", data.status);
        pre.removeAttribute("data-follow");
        if (empty && pre.textContent) { empty.hidden = true; }
        // htmx reloads the status part of the page on this event.
        document.body.dispatchEvent(new CustomEvent("job-ended", { detail: data }));
      });
      source.onerror = function () {
        // The browser would reconnect from the first offset and repeat lines: reconnect from ours.
        if (ended) return;
        source.close();
        window.setTimeout(open, 2000);
      };
    }

    open();
  }

  function start() {
    var pres = document.querySelectorAll("pre[data-follow]");
    for (var i = 0; i < pres.length; i++) follow(pres[i]);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
