(function () {
  // When its visitor leaves, the page asks voila to shut its kernel down: voila's own
  // `beforeunload` beacon, a POST to voila/api/shutdown/<kernel id> whose XSRF token is the
  // page's `_xsrf` cookie. Voila 0.5 never sets that cookie (voila issue #1458), so
  // jupyter_server answered 403 and every closed page left a kernel of about a gigabyte.
  // A random token of the page's own (the double-submit cookie tornado itself uses) lets the
  // request through; a cookie the server already set is kept.
  if (/(^|;\s*)_xsrf=/.test(document.cookie)) { return; }
  var bytes = new Uint8Array(16);
  window.crypto.getRandomValues(bytes);
  var token = Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  document.cookie = "_xsrf=" + token + "; path=/; SameSite=Strict";
})();
