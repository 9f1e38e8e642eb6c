// mailworker console: the only script, served from 'self' (the CSP allows
// no other). It ticks every row box when the header box is ticked.
document.addEventListener("DOMContentLoaded", function () {
  var all = document.getElementById("select-all");
  if (!all) return;
  all.addEventListener("change", function () {
    document.querySelectorAll("input.sel").forEach(function (b) { b.checked = all.checked; });
  });
});
