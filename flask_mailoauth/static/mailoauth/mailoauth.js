/* flask-mailoauth: opens the Config modal in a <dialog>, runs its tabs, Copy button, confirmations
   and form submissions. Vanilla JS, no build step; without it every link and form still works. */
(function () {
  "use strict";
  var SCRIPTED = { "X-Requested-With": "mailoauth" };
  var dialog;
  var opener;

  function getDialog() {
    if (!dialog) {
      dialog = document.createElement("dialog");
      dialog.className = "mailoauth-dialog";
      dialog.setAttribute("aria-labelledby", "mailoauth-title");
      // Escape, ×, Cancel: back to the Config button that opened the dialog.
      dialog.addEventListener("close", function () { if (opener && opener.isConnected) { opener.focus(); } });
      document.body.appendChild(dialog);
    }
    return dialog;
  }

  function show(html) {
    var d = getDialog();
    d.innerHTML = html;
    d.scrollTop = 0;
    wire(d);
    if (!d.open) { d.showModal(); }
    var first = d.querySelector("[aria-invalid=true]") || d.querySelector("[role=tab][aria-selected=true]");
    if (first) { first.focus(); }
  }

  function open(link) {
    opener = link;
    var url = new URL(link.getAttribute("data-mailoauth-href") || link.href, window.location.href);
    var selector = link.getAttribute("data-mailoauth-provider-select");
    var select = selector && document.querySelector(selector);
    if (select && select.value) { url.searchParams.set("provider", select.value); }
    fetch(url, { headers: SCRIPTED, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(show);
  }

  function follow(response) {
    var type = response.headers.get("Content-Type") || "";
    if (type.indexOf("application/json") === 0) {
      return response.json().then(function (data) { window.location.assign(data.redirect); });
    }
    return response.text().then(show);
  }

  function submit(form, event) {
    event.preventDefault();
    var question = form.getAttribute("data-mailoauth-confirm");
    if (question && !window.confirm(question)) { return; }
    var button = form.querySelector("[type=submit]");
    if (button) { button.disabled = true; }
    fetch(form.action, { method: "POST", body: new FormData(form), headers: SCRIPTED, credentials: "same-origin" })
      .then(follow)
      .finally(function () { if (button) { button.disabled = false; } });
  }

  function selectTab(root, tab) {
    var tabs = root.querySelectorAll("[role=tab]");
    tabs.forEach(function (t) {
      var on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      var panel = root.querySelector("#" + t.getAttribute("aria-controls"));
      if (panel) { panel.hidden = !on; }
    });
    var name = tab.id.replace("mailoauth-tab-", "");
    root.querySelectorAll("[data-mailoauth-for-tab]").forEach(function (el) {
      el.hidden = el.getAttribute("data-mailoauth-for-tab").split(" ").indexOf(name) < 0;
    });
  }

  function copy(button) {
    var input = document.querySelector(button.getAttribute("data-mailoauth-copy"));
    var status = document.querySelector(button.getAttribute("data-mailoauth-copied"));
    // the words come from the page, in the admin's language
    var label = button.textContent;
    var done = function () {
      button.textContent = button.getAttribute("data-mailoauth-copied-label");
      if (status) { status.textContent = button.getAttribute("data-mailoauth-copied-status"); }
      setTimeout(function () { button.textContent = label; if (status) { status.textContent = ""; } }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, function () { input.select(); });
    } else {
      input.select();
      if (document.execCommand("copy")) { done(); }
    }
  }

  function wire(root) {
    var tabs = Array.prototype.slice.call(root.querySelectorAll("[role=tab]"));
    tabs.forEach(function (tab, i) {
      tab.addEventListener("click", function (e) { e.preventDefault(); selectTab(root, tab); });
      tab.addEventListener("keydown", function (e) {
        if (e.key === " ") { e.preventDefault(); selectTab(root, tab); return; }
        var next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
        if (next === undefined) { return; }
        e.preventDefault();
        var target = tabs[(next + tabs.length) % tabs.length];
        selectTab(root, target);
        target.focus();
      });
    });
    // Reopen on the tab with an error, so a field message is never hidden.
    var invalid = root.querySelector("[aria-invalid=true]");
    var panel = invalid && invalid.closest("[role=tabpanel]");
    if (panel) { selectTab(root, root.querySelector("#" + panel.getAttribute("aria-labelledby"))); }
    if (invalid && !root.close) { invalid.focus(); }
    root.querySelectorAll("[data-mailoauth-copy]").forEach(function (b) {
      b.addEventListener("click", function () { copy(b); });
    });
    // A key file (a service account's JSON key) fills the secret field it names; nothing else
    // is read or sent, and without script the admin pastes the key instead.
    root.querySelectorAll("[data-mailoauth-secret-file]").forEach(function (input) {
      input.parentNode.hidden = false;
      input.addEventListener("change", function () {
        var file = input.files && input.files[0];
        if (!file) { return; }
        file.text().then(function (text) {
          root.querySelector(input.getAttribute("data-mailoauth-secret-file")).value = text;
        });
      });
    });
    root.querySelectorAll("[data-mailoauth-close]").forEach(function (b) {
      b.addEventListener("click", function (e) {
        // In the dialog: close it. On the page: a link goes to the host page by itself.
        if (root.close) { e.preventDefault(); root.close(); } else if (!b.href) { window.history.back(); }
      });
    });
    root.querySelectorAll("form").forEach(function (form) {
      form.addEventListener("submit", function (e) { submit(form, e); });
    });
  }

  document.addEventListener("click", function (e) {
    var link = e.target.closest && e.target.closest("[data-mailoauth-open]");
    if (link) { e.preventDefault(); open(link); }
  });
  // The Config link (what works without script) becomes a real button: Space opens it too.
  function upgrade(link) {
    var button = document.createElement("button");
    Array.prototype.forEach.call(link.attributes, function (a) {
      if (a.name !== "href") { button.setAttribute(a.name, a.value); }
    });
    button.type = "button";
    button.setAttribute("data-mailoauth-href", link.href);
    button.setAttribute("aria-haspopup", "dialog");
    button.textContent = link.textContent;
    link.replaceWith(button);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("a[data-mailoauth-open]").forEach(upgrade);
    document.querySelectorAll(".mailoauth-page [data-mailoauth-modal]").forEach(wire);
  });
})();
