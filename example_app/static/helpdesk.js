// Tabs without reloading and Authentication-dependent fields. Everything works without it:
// the tab links load ?tab=..., and the server hides what the saved Authentication does not use.
(function () {
  "use strict";
  document.querySelectorAll("[role=tablist]").forEach(function (list) {
    var tabs = Array.prototype.slice.call(list.querySelectorAll("[role=tab]"));
    var form = list.closest("form");
    var field = form && form.querySelector("input[name=tab]");
    function select(tab, focus) {
      tabs.forEach(function (t) {
        var on = t === tab;
        t.setAttribute("aria-selected", on ? "true" : "false");
        t.tabIndex = on ? 0 : -1;
        document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
      });
      if (field) { field.value = tab.getAttribute("data-tab"); }
      if (focus) { tab.focus(); }
      history.replaceState(null, "", tab.href);
    }
    tabs.forEach(function (tab, i) {
      tab.addEventListener("click", function (e) { e.preventDefault(); select(tab, false); });
      tab.addEventListener("keydown", function (e) {
        var step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
        if (step) { e.preventDefault(); select(tabs[(i + step + tabs.length) % tabs.length], true); }
      });
    });
  });
  document.querySelectorAll("[data-show-when]").forEach(function (el) {
    var select = document.querySelector(el.getAttribute("data-show-when"));
    var values = el.getAttribute("data-values").split(" ");
    if (!select) { return; }
    select.addEventListener("change", function () { el.hidden = values.indexOf(select.value) < 0; });
  });
})();
