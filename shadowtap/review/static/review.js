// The review page's keyboard: 1-4 choose the better answer, q/w and a/s cycle "refused" and "format met"
// for A and B (not judged, yes, no), n writes a note, Enter saves, k skips; after saving, Enter goes on.
"use strict";
(function () {
  const form = document.getElementById("verdict");
  if (!form) {
    return;
  }
  const pair = document.getElementById("pair").dataset.pair;
  const note = document.getElementById("note");
  const status = document.getElementById("status");
  const STATES = ["", "yes", "no"];
  const SHOWN = { "": "not judged", yes: "yes", no: "no" };
  const BETTER_KEYS = { 1: "A", 2: "B", 3: "tie", 4: "both_bad" };
  const TRI_KEYS = { q: "refused-a", w: "refused-b", a: "format-a", s: "format-b" };
  let saved = false;

  function cycle(button) {
    const next = STATES[(STATES.indexOf(button.dataset.state) + 1) % STATES.length];
    button.dataset.state = next;
    button.querySelector("span").textContent = SHOWN[next];
  }

  function verdict(id) {
    const state = document.getElementById(id).dataset.state;
    return state === "" ? null : state === "yes";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await response.json();
    if (!response.ok) {
      throw new Error(data.error.message);
    }
    return data;
  }

  function reveal(data) {
    const box = document.getElementById("reveal");
    box.textContent =
      "Saved. A was the " + data.revealed.A + ", B the " + data.revealed.B +
      "; queued because: " + data.reason + ". Press Enter for the next pair.";
    box.hidden = false;
    form.querySelectorAll("input, button, textarea").forEach(function (el) { el.disabled = true; });
  }

  async function save() {
    const chosen = form.querySelector('input[name="better"]:checked');
    if (!chosen) {
      status.textContent = "Choose the better answer first: 1 (A), 2 (B), 3 (tie) or 4 (both bad).";
      return;
    }
    try {
      const data = await post("/api/label", {
        pair_id: pair,
        better: chosen.value,
        refused: { A: verdict("refused-a"), B: verdict("refused-b") },
        format_ok: { A: verdict("format-a"), B: verdict("format-b") },
        note: note.value,
      });
      saved = true;
      reveal(data);
    } catch (error) {
      status.textContent = "Not saved: " + error.message;
    }
  }

  async function skip() {
    try {
      await post("/api/skip", { pair_id: pair });
      window.location.reload();
    } catch (error) {
      status.textContent = "Not skipped: " + error.message;
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    save();
  });
  document.getElementById("skip").addEventListener("click", skip);
  form.querySelectorAll("button.tri").forEach(function (button) {
    button.addEventListener("click", function () { cycle(button); });
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    if (event.target === note) {
      if (event.key === "Escape") {
        note.blur();
      }
      return;
    }
    if (saved) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        window.location.reload();
      }
      return;
    }
    const key = event.key;
    if (BETTER_KEYS[key]) {
      form.querySelector('input[name="better"][value="' + BETTER_KEYS[key] + '"]').checked = true;
    } else if (TRI_KEYS[key]) {
      cycle(document.getElementById(TRI_KEYS[key]));
    } else if (key === "n") {
      event.preventDefault();
      note.focus();
    } else if (key === "k") {
      skip();
    } else if (key === "Enter") {
      event.preventDefault();
      save();
    } else {
      return;
    }
    event.preventDefault();
  });
})();
