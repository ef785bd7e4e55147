(function () {
  document.title = "Galaxy10 classifier";
  if (window.__galaxyUploadGuard) { return; }
  window.__galaxyUploadGuard = true;
  var LIMIT = __UPLOAD_LIMIT_BYTES__;
  var read = FileReader.prototype.readAsArrayBuffer;
  var used = 0;
  FileReader.prototype.readAsArrayBuffer = function (blob) {
    if (typeof File !== "undefined" && blob instanceof File) {
      if (used === 0) { setTimeout(function () { used = 0; }, 0); }
      if (used + blob.size > LIMIT) { return read.call(this, new Blob([])); }
      used += blob.size;
    }
    return read.call(this, blob);
  };
})();
