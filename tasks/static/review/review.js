// Saves every rating the moment it is given (one value per request), and seeks the video.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.content : "";
  var status = document.getElementById("save-status");
  var COMMENT_DELAY_MS = 700;  // typing pause before a comment is saved
  var pending = 0;

  function show(state, text) {
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text;
  }

  function applyChoices(form, choices) {
    if (!choices) return;
    ["best", "second"].forEach(function (name) {
      form.querySelectorAll('input[type="radio"][name="' + name + '"]').forEach(function (el) {
        el.checked = el.value === choices[name];
      });
    });
  }

  function save(form, field, value) {
    pending += 1;
    show("saving", "Saving…");
    return fetch("/api/save", {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({study: form.dataset.study, case_id: form.dataset.case, field: field, value: value})
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.error || r.statusText);
        return body;
      });
    }).then(function (body) {
      pending -= 1;
      applyChoices(form, body.choices);
      if (pending === 0) show("saved", "Saved");
    }).catch(function (err) {
      pending -= 1;
      show("error", "Not saved: " + err.message);
    });
  }

  document.querySelectorAll("form[data-autosave]").forEach(function (form) {
    form.addEventListener("change", function (ev) {
      var el = ev.target;
      if (el.type === "radio" && el.checked) save(form, el.name, el.value);
      if (el.tagName === "TEXTAREA") save(form, el.name, el.value);
    });
    var timer = null;
    form.querySelectorAll("textarea").forEach(function (ta) {
      ta.addEventListener("input", function () {
        clearTimeout(timer);
        timer = setTimeout(function () { save(form, ta.name, ta.value); }, COMMENT_DELAY_MS);
      });
    });
    form.addEventListener("submit", function (ev) { ev.preventDefault(); });
  });

  var video = document.getElementById("video");
  document.querySelectorAll("[data-seek]").forEach(function (b) {
    b.addEventListener("click", function () {
      if (!video) return;
      video.currentTime = parseFloat(b.dataset.seek);
      video.play().catch(function () {});
    });
  });
})();
