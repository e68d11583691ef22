// hearthlm's web chat: documents (upload, cited answers), a plain chat, and agent runs.
// No framework and no other host: it speaks the server's own API with fetch().
"use strict";

const $ = (id) => document.getElementById(id);
const state = { mode: "docs", session: null, history: [], abort: null, poll: null };

function headers(extra = {}) {
  const key = localStorage.getItem("hearth-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) {
    askKey();
    throw new Error("this server needs an API key");
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function askKey() {
  const key = prompt("API key for this server:", localStorage.getItem("hearth-key") || "");
  if (key !== null) { localStorage.setItem("hearth-key", key.trim()); location.reload(); }
}

// Server-sent events from a fetch() body: yields {event, data} as they arrive.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data === "[DONE]") return;
      if (data) yield { event, data: JSON.parse(data) };
    }
  }
}

function bubble(role, text = "") {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showError(div, message) {
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = message;
  div.append(p);
}

function showCitations(div, citations, collection) {
  if (!citations || !citations.length) return;
  const row = document.createElement("div");
  row.className = "citations";
  for (const c of citations) {
    const chip = document.createElement("button");
    chip.className = "citation";
    const page = c.page ? `, p. ${c.page}` : "";
    chip.textContent = `[${c.source}] ${c.file}${page}, chars ${c.start}-${c.end}`;
    chip.title = c.text;
    chip.addEventListener("click", () => openSource(collection, c));
    row.append(chip);
  }
  div.append(row);
}

async function openSource(collection, c) {
  const query = new URLSearchParams({ start: c.start, end: c.end });
  if (c.page) query.set("page", c.page);
  const path = `/v1/collections/${encodeURIComponent(collection)}/files/${encodeURIComponent(c.file)}/passage?${query}`;
  const passage = await (await api(path)).json();
  const [from, to] = passage.highlight;
  const text = $("source-text");
  text.replaceChildren();
  const mark = document.createElement("mark");
  mark.textContent = passage.text.slice(from, to);
  text.append(passage.text.slice(0, from), mark, passage.text.slice(to));
  const page = passage.page ? `, page ${passage.page}` : "";
  $("source-where").textContent = `${passage.file}${page}, characters ${passage.start}-${passage.end}` +
    (passage.heading ? ` (${passage.heading})` : "");
  $("source").hidden = false;
  mark.scrollIntoView({ block: "center" });
}

// -- collections -------------------------------------------------------------------------------

function collection() { return $("new-collection").value.trim() || $("collection").value; }

async function loadCollections(select) {
  const { data } = await (await api("/v1/collections")).json();
  const menu = $("collection");
  menu.replaceChildren(...data.map((c) => new Option(c.name, c.name)));
  if (select) menu.value = select;
  if (!data.length) menu.append(new Option("(none yet: name one and upload)", ""));
  await refresh();
}

async function refresh() {
  const name = $("collection").value;
  if (!name) { $("files").replaceChildren(); return; }
  const info = await (await api(`/v1/collections/${encodeURIComponent(name)}`)).json();
  const list = info.files.map((f) => {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = f.file;
    if (f.skipped) {
      const why = document.createElement("span");
      why.className = "skipped";
      why.textContent = `skipped: ${f.skipped}`;
      label.append(why);
    }
    const count = document.createElement("span");
    count.className = "muted";
    count.textContent = f.indexed ? `${f.chunks} chunk${f.chunks === 1 ? "" : "s"}` : f.skipped ? "" : "waiting";
    const remove = document.createElement("button");
    remove.textContent = "✕";
    remove.title = `Delete ${f.file}`;
    remove.addEventListener("click", async () => {
      await api(`/v1/collections/${encodeURIComponent(name)}/files/${encodeURIComponent(f.file)}`, { method: "DELETE" });
      refresh();
    });
    li.append(label, count, remove);
    return li;
  });
  $("files").replaceChildren(...list);
  const job = info.indexing;
  $("progress").hidden = !job.running;
  if (job.running) {
    const share = job.total ? Math.round((100 * job.done) / job.total) : 0;
    $("progress-fill").style.width = `${share}%`;
    $("progress-text").textContent = `indexing ${job.stage}: ${job.done} of ${job.total}`;
    clearTimeout(state.poll);
    state.poll = setTimeout(refresh, 500);
  } else {
    $("progress-text").textContent = "";
  }
}

async function upload(files) {
  const name = collection();
  $("upload-error").hidden = true;
  if (!name) { showUploadError("Name a collection first."); return; }
  const form = new FormData();
  for (const file of files) form.append("files", file);
  $("progress").hidden = false;
  $("progress-text").textContent = `uploading ${files.length} file(s)…`;
  try {
    await api(`/v1/collections/${encodeURIComponent(name)}/files`, { method: "POST", body: form });
    $("new-collection").value = "";
    await loadCollections(name);
  } catch (error) {
    $("progress").hidden = true;
    showUploadError(error.message);
  }
}

function showUploadError(message) {
  $("upload-error").textContent = message;
  $("upload-error").hidden = false;
}

// -- asking ------------------------------------------------------------------------------------

async function send(question) {
  const user = bubble("user", question);
  const reply = bubble("assistant");
  const text = reply.querySelector(".text");
  state.abort = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  try {
    if (state.mode === "agent") await runAgent(question, reply);
    else await chat(question, reply, text);
  } catch (error) {
    if (error.name === "AbortError") reply.classList.add("stopped");
    else showError(reply, error.message);
  } finally {
    state.abort = null;
    $("send").hidden = false;
    $("stop").hidden = true;
    user.scrollIntoView({ block: "start" });
  }
}

async function chat(question, reply, text) {
  const docs = state.mode === "docs";
  const name = $("collection").value;
  if (docs && !name) throw new Error("Upload files to a collection first.");
  const body = { messages: [...state.history, { role: "user", content: question }], stream: true };
  if (docs) {
    body.messages = [{ role: "user", content: question }];
    body.collection = name;
    if (state.session) body.session_id = state.session;
  }
  const response = await api("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: state.abort.signal,
  });
  for await (const { data } of events(response)) {
    if (data.error) throw new Error(data.error.message);
    const delta = data.choices && data.choices[0] ? data.choices[0].delta : {};
    if (delta.content) { text.textContent += delta.content; reply.scrollIntoView({ block: "end" }); }
    if (data.session_id) state.session = data.session_id;
    if (data.citations) showCitations(reply, data.citations, name);
  }
  if (!docs) state.history.push({ role: "user", content: question }, { role: "assistant", content: text.textContent });
}

async function runAgent(question, reply) {
  const tools = [...document.querySelectorAll("#tools input:checked")].map((i) => i.value);
  const body = { question, tools, stream: true };
  if (tools.includes("docs") || tools.includes("web_search")) body.collection = $("collection").value || undefined;
  const response = await api("/v1/agent/runs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: state.abort.signal,
  });
  const text = reply.querySelector(".text");
  text.textContent = "Working…";
  for await (const { event, data } of events(response)) {
    if (event === "step") {
      const step = document.createElement("div");
      step.className = "step";
      const parts = [["Thought", data.thought], ["Action", `${data.tool} ${JSON.stringify(data.tool_input)}`],
        ["Observation", data.observation], ["Seconds", data.seconds.toFixed(1)]];
      for (const [label, value] of parts) {
        if (!value) continue;
        const b = document.createElement("b");
        b.textContent = `${label}: `;
        step.append(b, `${value}\n`);
      }
      reply.insertBefore(step, text);
    } else if (event === "result") {
      text.textContent = data.answer !== null ? `Answer: ${data.answer}` : `Stopped (${data.stopped_reason}) without an answer.`;
    } else if (event === "error") {
      throw new Error(data.error.message);
    }
  }
}

// -- wiring ------------------------------------------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  for (const b of document.querySelectorAll("#modes button")) b.classList.toggle("active", b.dataset.mode === mode);
  $("side").hidden = mode === "chat";
  $("collection-panel").hidden = mode === "chat";
  $("tools-panel").hidden = mode !== "agent";
  $("source").hidden = true;
  $("question").placeholder = { docs: "Ask about your documents…", chat: "Message the model…", agent: "Give the agent a task…" }[mode];
  $("messages").replaceChildren();
  state.history = [];
  state.session = null;
}

async function start() {
  for (const b of document.querySelectorAll("#modes button")) b.addEventListener("click", () => setMode(b.dataset.mode));
  $("key-button").addEventListener("click", askKey);
  $("collection").addEventListener("change", () => { state.session = null; refresh(); });
  const drop = $("drop");
  drop.addEventListener("click", () => $("file-input").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file-input").click(); });
  $("file-input").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload([...e.dataTransfer.files]); });
  $("source-close").addEventListener("click", () => { $("source").hidden = true; });
  $("stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.abort) return;
    $("question").value = "";
    send(question);
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask-form").requestSubmit(); }
  });
  try {
    const info = await (await api("/v1/server")).json();
    $("model").textContent = info.model;
    $("tools").replaceChildren(...info.tools.map((name) => {
      const label = document.createElement("label");
      label.className = "tool";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = name;
      box.checked = name === "calculator";
      label.append(box, ` ${name}`);
      return label;
    }));
    await loadCollections();
  } catch (error) {
    showUploadError(error.message);
  }
}

start();
