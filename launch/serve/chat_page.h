// The chat page `meshtrain serve` answers GET / with: one self-contained HTML document (no external
// scripts, styles or fonts). It posts to /v1/completions with stream = true and appends each
// server-sent event's text as it arrives. /?prompt=TEXT&run=1 fills the prompt and submits it on
// load (what the browser test uses; handy for links too).
#pragma once

namespace meshtrain {

inline constexpr const char* kChatPage = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshtrain</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin-bottom: 0.2rem; }
  #model { color: #666; font-size: 0.9rem; margin-bottom: 1rem; }
  textarea { width: 100%; min-height: 6rem; font: inherit; padding: 0.5rem; box-sizing: border-box; }
  .controls { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; margin: 0.6rem 0; }
  .controls label { font-size: 0.9rem; }
  .controls input { width: 5rem; }
  button { font: inherit; padding: 0.4rem 1.2rem; }
  #output { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 4px; padding: 0.8rem; min-height: 8rem; }
  #output .prompt { color: #666; }
  #status { color: #666; font-size: 0.85rem; margin-top: 0.4rem; }
  .error { color: #b00020; }
</style>
</head>
<body>
<h1>meshtrain</h1>
<div id="model">loading&hellip;</div>
<textarea id="prompt" placeholder="Type a prompt; the model continues it."></textarea>
<div class="controls">
  <label>temperature <input id="temperature" type="number" min="0" max="5" step="0.1" value="0.8"></label>
  <label>top-k <input id="top_k" type="number" min="0" step="1" value="40"></label>
  <label>top-p <input id="top_p" type="number" min="0.01" max="1" step="0.05" value="1"></label>
  <label>max tokens <input id="max_tokens" type="number" min="1" step="1" value="100"></label>
  <button id="send">Generate</button>
  <button id="stop" disabled>Stop</button>
</div>
<div id="output"></div>
<div id="status"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let controller = null;

fetch("/v1/models").then((r) => r.json()).then((m) => {
  const d = m.data[0];
  $("model").textContent = d.id + " \u2014 context " + d.context_length + " tokens";
  $("max_tokens").max = d.context_length;
}).catch(() => { $("model").textContent = ""; });

function number(id) { return Number($(id).value); }

async function generate() {
  const prompt = $("prompt").value;
  const out = $("output");
  out.textContent = "";
  const shown = document.createElement("span");
  shown.className = "prompt";
  shown.textContent = prompt;
  const text = document.createElement("span");
  text.id = "completion";
  out.append(shown, text);
  $("status").textContent = "generating\u2026";
  $("send").disabled = true;
  $("stop").disabled = false;
  controller = new AbortController();
  const started = performance.now();
  let pieces = 0;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, stream: true, temperature: number("temperature"), top_k: number("top_k"),
                             top_p: number("top_p"), max_tokens: number("max_tokens") }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(body.error.message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", finish = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices[0];
        text.textContent += choice.text;
        pieces += choice.text.length ? 1 : 0;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const seconds = (performance.now() - started) / 1000;
    $("status").textContent = "done (" + (finish || "end") + ") in " + seconds.toFixed(2) + " s";
    document.body.dataset.done = "1";
  } catch (e) {
    const stopped = e.name === "AbortError";
    $("status").textContent = stopped ? "stopped" : "";
    if (!stopped) {
      const err = document.createElement("div");
      err.className = "error";
      err.textContent = "error: " + e.message;
      out.append(err);
    }
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("send").addEventListener("click", generate);
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
const params = new URLSearchParams(location.search);
if (params.has("prompt")) $("prompt").value = params.get("prompt");
if (params.get("run") === "1") generate();
</script>
</body>
</html>
)HTML";

}  // namespace meshtrain
