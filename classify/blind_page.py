"""The blind-test page: one self-contained HTML file, no server, no network, works offline.

It holds a random test id and, per image, an opaque random id and a data URI; nothing else
about an image (class, file name, real or synthetic) is in the page. Each rater gets their
own random order (kept with their answers in the browser's localStorage, so a closed tab
resumes). Keys: R real, S synthetic, 1-3 confidence (optional, before R/S), K skip, U back.
The last answer downloads `answers.json`:

    {"format": "cellsynth-blind-answers", "version": 1, "test_id", "rater", "started", "finished",
     "user_agent", "n_images", "answers": [{"id", "position", "call": "real"|"synthetic"|"skip",
     "confidence": 1|2|3|null, "answered", "ms"}]}
"""
from __future__ import annotations

import json

_TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="referrer" content="no-referrer">
<title>Real or synthetic? A blind test</title>
<style>
:root { --side: min(__SIZE__px, calc(100vh - 230px), calc(100vw - 32px)); color-scheme: dark; }
* { box-sizing: border-box; }
body { margin: 0; background: #1e1e1e; color: #f2f2f2; font: 18px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 10px 16px; }
header { display: flex; align-items: center; gap: 16px; flex-wrap: wrap; }
h1 { font-size: 22px; margin: 0; flex: 1 1 auto; }
progress { width: 260px; height: 14px; }
#progress-text { font-variant-numeric: tabular-nums; }
section { margin-top: 10px; }
figure { margin: 0 auto; width: var(--side); height: var(--side); background: #000; }
#shot { display: block; width: var(--side); height: var(--side); object-fit: contain; }
.row { display: flex; justify-content: center; align-items: center; gap: 12px; margin-top: 10px; flex-wrap: wrap; }
button { font: inherit; color: #111; background: #e8e8e8; border: 2px solid #e8e8e8; border-radius: 6px; padding: 6px 16px; cursor: pointer; }
button.big { font-size: 22px; min-width: 190px; padding: 8px 22px; }
button[aria-pressed="true"] { background: #7fc8ff; border-color: #7fc8ff; }
button:disabled { opacity: .45; cursor: default; }
button:focus-visible, input:focus-visible { outline: 4px solid #ffbf47; outline-offset: 2px; }
kbd { font: 600 .85em ui-monospace, Menlo, Consolas, monospace; border: 1px solid #777; border-radius: 4px; padding: 0 5px; background: #fff; color: #111; }
input { font: inherit; padding: 6px 10px; border-radius: 6px; border: 2px solid #aaa; width: 320px; }
.note { color: #cfcfcf; font-size: 16px; }
.warn { color: #ffd27f; }
ul { margin: 6px 0; }
</style>
</head>
<body>
<main>
<header>
  <h1>Real or synthetic?</h1>
  <span id="progress-text" aria-live="polite"></span>
  <progress id="progress" max="__TOTAL__" value="0" aria-label="images answered"></progress>
</header>
<p id="storage-warning" class="warn" hidden>This browser does not keep your answers if the tab is closed: finish in one sitting.</p>

<section id="start" hidden aria-labelledby="start-title">
  <h2 id="start-title">A blind test</h2>
  <p>You will see __TOTAL__ micrographs, one at a time. Some are real, some were made by a generative model.
     For each one, say whether you think it is <strong>real</strong> or <strong>synthetic</strong>.
     Each image is shown at the same size; nothing but the image itself tells them apart.</p>
  <ul class="note">
    <li><kbd>R</kbd> real, <kbd>S</kbd> synthetic (the next image follows at once)</li>
    <li><kbd>1</kbd> <kbd>2</kbd> <kbd>3</kbd> before R or S: how sure you are (1 guess, 2 fairly sure, 3 sure), optional</li>
    <li><kbd>K</kbd> skip an image you cannot judge, <kbd>U</kbd> back to the previous image</li>
    <li>Your answers stay in this browser: close the tab and reopen the file to go on later.
        At the end the browser downloads <code>answers.json</code>: send that file back.</li>
  </ul>
  <p><label for="rater">Your name (or initials)</label><br>
     <input id="rater" autocomplete="name" required>
     <button id="begin" class="big">Start</button></p>
  <p id="name-missing" class="warn" role="alert" hidden>Please type your name first.</p>
</section>

<section id="resume" hidden aria-labelledby="resume-title">
  <h2 id="resume-title">Welcome back, <span id="resume-name"></span></h2>
  <p><span id="resume-count"></span> Press Enter to go on.</p>
  <p><button id="continue" class="big">Continue</button> <button id="restart">Start over as another rater</button></p>
</section>

<section id="task" hidden aria-label="image to judge">
  <figure><img id="shot" alt="" width="__SIZE__" height="__SIZE__"></figure>
  <div class="row" role="group" aria-label="your call">
    <button id="call-real" class="big" aria-keyshortcuts="R"><kbd>R</kbd> Real</button>
    <button id="call-synthetic" class="big" aria-keyshortcuts="S"><kbd>S</kbd> Synthetic</button>
  </div>
  <div class="row" role="group" aria-label="confidence, optional">
    <span class="note">How sure (optional):</span>
    <button class="conf" data-conf="1" aria-pressed="false" aria-keyshortcuts="1"><kbd>1</kbd> guess</button>
    <button class="conf" data-conf="2" aria-pressed="false" aria-keyshortcuts="2"><kbd>2</kbd> fairly sure</button>
    <button class="conf" data-conf="3" aria-pressed="false" aria-keyshortcuts="3"><kbd>3</kbd> sure</button>
    <span class="note">|</span>
    <button id="skip" aria-keyshortcuts="K"><kbd>K</kbd> skip</button>
    <button id="back" aria-keyshortcuts="U"><kbd>U</kbd> back</button>
  </div>
</section>

<section id="done" hidden aria-labelledby="done-title">
  <h2 id="done-title">Thank you, <span id="done-name"></span></h2>
  <p id="done-count"></p>
  <p>Your browser has downloaded <code>answers.json</code>. Please send it to the person who gave you this test.</p>
  <p><button id="download" class="big">Download answers.json again</button> <button id="new-rater">New rater</button></p>
</section>
</main>
<script type="application/json" id="blind-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("blind-data").textContent);
  var SRC = {};
  DATA.images.forEach(function (im) { SRC[im.id] = im.src; });
  var TOTAL = DATA.images.length;
  var STORE = "cellsynth-blind:" + DATA.test_id;
  var state = null, confidence = null, shownAt = 0;

  function $(id) { return document.getElementById(id); }
  function now() { return new Date().toISOString(); }
  function save() {
    try { localStorage.setItem(STORE, JSON.stringify(state)); }
    catch (e) { $("storage-warning").hidden = false; }
  }
  function load() {
    try { var s = localStorage.getItem(STORE); return s ? JSON.parse(s) : null; }
    catch (e) { $("storage-warning").hidden = false; return null; }
  }
  function forget() { try { localStorage.removeItem(STORE); } catch (e) { /* nothing kept anyway */ } }
  function random() {
    if (window.crypto && window.crypto.getRandomValues) {
      var a = new Uint32Array(1); window.crypto.getRandomValues(a); return a[0] / 4294967296;
    }
    return Math.random();
  }
  function shuffled(list) {  // Fisher-Yates: every rater sees their own order
    var a = list.slice();
    for (var i = a.length - 1; i > 0; i--) { var j = Math.floor(random() * (i + 1)); var t = a[i]; a[i] = a[j]; a[j] = t; }
    return a;
  }
  function show(name) {
    ["start", "resume", "task", "done"].forEach(function (s) { $(s).hidden = s !== name; });
  }
  function answered() { return state ? Object.keys(state.answers).length : 0; }
  function progress() {
    var n = answered();
    $("progress").value = n;
    $("progress-text").textContent = n + " of " + TOTAL + " answered";
  }
  function setConfidence(c) {  // c: 1-3, or null for none
    confidence = c;
    Array.prototype.forEach.call(document.querySelectorAll(".conf"), function (b) {
      b.setAttribute("aria-pressed", String(Number(b.getAttribute("data-conf")) === confidence));
    });
  }
  function toggleConfidence(c) { setConfidence(confidence === c ? null : c); }
  function render() {
    progress();
    if (state.position >= state.order.length) { finish(); return; }
    show("task");
    var id = state.order[state.position], img = $("shot");
    img.src = SRC[id];
    img.setAttribute("data-id", id);
    img.alt = "Image " + (state.position + 1) + " of " + TOTAL;
    setConfidence(null);
    $("back").disabled = state.position === 0;
    shownAt = performance.now();
  }
  function answer(call) {
    if (!state || state.position >= state.order.length || $("task").hidden) return;
    var id = state.order[state.position];
    state.answers[id] = { id: id, position: state.position, call: call,
                          confidence: call === "skip" ? null : confidence,
                          answered: now(), ms: Math.round(performance.now() - shownAt) };
    state.position += 1;
    save();
    render();
  }
  function back() {
    if (!state || state.position === 0 || $("task").hidden) return;
    state.position -= 1;
    delete state.answers[state.order[state.position]];
    save();
    render();
  }
  function answersJson() {
    return { format: "cellsynth-blind-answers", version: 1, test_id: DATA.test_id, rater: state.rater,
             started: state.started, finished: state.finished || null, user_agent: navigator.userAgent,
             n_images: TOTAL,
             answers: state.order.filter(function (id) { return state.answers[id]; })
                                 .map(function (id) { return state.answers[id]; }) };
  }
  function download() {
    var blob = new Blob([JSON.stringify(answersJson(), null, 2)], { type: "application/json" });
    var url = URL.createObjectURL(blob), a = document.createElement("a");
    a.href = url; a.download = "answers.json"; a.style.display = "none";
    document.body.appendChild(a); a.click();
    setTimeout(function () { URL.revokeObjectURL(url); a.remove(); }, 2000);
  }
  function finish() {
    if (!state.finished) { state.finished = now(); save(); }
    var skipped = state.order.filter(function (id) { return state.answers[id] && state.answers[id].call === "skip"; }).length;
    $("done-name").textContent = state.rater;
    $("done-count").textContent = "All " + TOTAL + " images done (" + skipped + " skipped).";
    show("done");
    if (!state.downloaded) { download(); state.downloaded = true; save(); }
    $("download").focus();
  }
  function begin() {
    var name = $("rater").value.trim();
    if (!name) { $("name-missing").hidden = false; $("rater").focus(); return; }
    state = { version: 1, test_id: DATA.test_id, rater: name, started: now(), finished: null,
              downloaded: false, position: 0, answers: {},
              order: shuffled(DATA.images.map(function (im) { return im.id; })) };
    save();
    render();
  }
  function restart() {
    var who = state ? state.rater : "";
    if (state && !window.confirm("Clear the answers of " + who + " kept in this browser? Download them first if they are not sent yet.")) return;
    forget(); state = null; progress();
    $("rater").value = ""; show("start"); $("rater").focus();
  }

  $("begin").addEventListener("click", begin);
  $("continue").addEventListener("click", render);
  $("restart").addEventListener("click", restart);
  $("new-rater").addEventListener("click", restart);
  $("download").addEventListener("click", download);
  $("call-real").addEventListener("click", function () { answer("real"); });
  $("call-synthetic").addEventListener("click", function () { answer("synthetic"); });
  $("skip").addEventListener("click", function () { answer("skip"); });
  $("back").addEventListener("click", back);
  Array.prototype.forEach.call(document.querySelectorAll(".conf"), function (b) {
    b.addEventListener("click", function () { toggleConfidence(Number(b.getAttribute("data-conf"))); });
  });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;  // Ctrl+R reloads, a held key answers once
    if (e.target && e.target.tagName === "INPUT") {
      if (e.key === "Enter") { e.preventDefault(); begin(); }
      return;
    }
    if ($("task").hidden) return;
    var k = e.key.toLowerCase();
    if (k === "r") answer("real");
    else if (k === "s") answer("synthetic");
    else if (k === "k") answer("skip");
    else if (k === "u" || k === "backspace") back();
    else if (k === "1" || k === "2" || k === "3") toggleConfidence(Number(k));
    else return;
    e.preventDefault();
  });

  state = load();
  progress();
  if (state && state.test_id === DATA.test_id && state.rater) {
    if (state.position >= state.order.length) { finish(); }
    else {
      $("resume-name").textContent = state.rater;
      $("resume-count").textContent = answered() + " of " + TOTAL + " images answered.";
      show("resume"); $("continue").focus();
    }
  } else { state = null; show("start"); $("rater").focus(); }
})();
</script>
</body>
</html>
"""


def render_page(test_id: str, images: list[dict], size: int) -> str:
    """The page's HTML. images: [{"id": opaque id, "src": data URI}] in the page's default order; size: pixels."""
    for im in images:
        if set(im) != {"id", "src"}:  # the page carries nothing else about an image
            raise ValueError(f"page image entries hold only id and src, got {sorted(im)}")
    data = json.dumps({"test_id": test_id, "images": images}, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # cannot close the script element early
    return (_TEMPLATE.replace("__SIZE__", str(int(size)))
            .replace("__TOTAL__", str(len(images)))
            .replace("__DATA__", data))
