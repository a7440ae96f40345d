// Mercato's pages work without JavaScript; this makes a few of them better. It is the
// only script the pages load (their Content-Security-Policy allows no inline script).
(function () {
  "use strict";

  // A form that takes more than a second (a connection test, an upload, a billing run):
  // its button says so and cannot be pressed twice. <form data-busy="Testing…">
  document.querySelectorAll("form[data-busy]").forEach(function (form) {
    form.addEventListener("submit", function () {
      var button = form.querySelector("button");
      if (!button) { return; }
      button.disabled = true;
      button.textContent = " " + (form.dataset.busy || "Working…");
      button.insertAdjacentHTML("afterbegin", '<span class="spinner" aria-hidden="true"></span>');
    });
  });

  // A page that follows something happening elsewhere (an order being set up) reloads
  // itself: <meta name="mercato-reload" content="1500"> (milliseconds).
  var reload = document.querySelector('meta[name="mercato-reload"]');
  if (reload) {
    setTimeout(function () { window.location.reload(); }, Number(reload.content) || 2000);
  }

  // Live costs: the subscription's table asks for fresh figures every 15 s and when the
  // tab gets the focus again.
  var table = document.getElementById("live-cost");
  if (table && window.fetch) {
    var money = function (value, currency) {
      var text = String(value), places = text.indexOf(".") < 0 ? 0 : text.length - text.indexOf(".") - 1;
      return Number(value).toLocaleString("en", {
        minimumFractionDigits: Math.max(2, places), maximumFractionDigits: Math.max(2, places)
      }) + " " + currency;
    };
    var set = function (key, text) {
      var cell = table.querySelector('[data-cost="' + key + '"]');
      if (cell && cell.textContent !== text) { cell.textContent = text; }
    };
    var refresh = function () {
      fetch(table.dataset.url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (cost) {
          if (!cost) { return; }
          cost.lines.forEach(function (line, i) {
            if (line.kind !== "fee") { set("quantity-" + i, line.quantity + (line.unit ? " " + line.unit : "")); }
            set("amount-" + i, money(line.amount, cost.currency));
            set("projected-" + i, money(line.projected, cost.currency));
          });
          set("total", money(cost.total, cost.currency));
          set("projected_total", money(cost.projected_total, cost.currency));
        })
        .catch(function () {});
    };
    setInterval(refresh, 15000);
    window.addEventListener("focus", refresh);
  }
})();
