// The chat page.  Conversations live on the box; the owner's session cookie authenticates and every
// change carries the page's CSRF token.  Replies arrive as text while they stream and, a few times a
// second, as HTML the box rendered and sanitized: this script never turns model output into markup.
import { $, csrf, failure } from "./transfer.js";

const OFFLINE = "The box did not answer. Check that it is on and that this device is on its network, then try again.";
let current = null;
let streaming = null; // the AbortController of the reply being streamed

// The box's JSON API as the owner: the response (a reply streams), or an Error saying what to do.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" } });
  } catch (err) {
    throw err.name === "AbortError" ? err : new Error(OFFLINE);
  }
  if (response.status === 401) { location.assign("/login?next=/"); throw new Error("Your session ended; log in again."); }
  if (!response.ok) throw new Error(await failure(response));
  return response;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function notes(message) {
  const said = [];
  if (message.dropped) {
    said.push(`The ${message.dropped} oldest messages no longer fit in the model's memory (its context) and were ` +
      "left out of this reply. Start a new chat for a new topic.");
  }
  if (message.finish === "length") said.push("This reply reached its length limit and was cut. Ask it to go on, or regenerate it.");
  if (message.finish === "stopped") said.push("You stopped this reply.");
  return said;
}

function addMessage(message) {
  const item = document.createElement("li");
  item.className = message.role;
  const body = document.createElement("div");
  body.className = "content";
  if (message.html !== undefined) body.innerHTML = message.html; // sanitized on the box (web/markdown.py)
  else body.textContent = message.content;
  item.append(body);
  $("messages").append(item);
  setNotes(item, message);
  item.scrollIntoView({ block: "end" });
  return item;
}

function setNotes(item, message) {
  item.querySelectorAll(".note").forEach((n) => n.remove());
  for (const text of notes(message)) {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = text;
    item.append(note);
  }
}

function markLastReply() {
  document.querySelectorAll("#messages .regenerate").forEach((b) => b.remove());
  const items = $("messages").children;
  const last = items[items.length - 1];
  if (!last || last.className !== "assistant") return;
  const again = document.createElement("button");
  again.type = "button";
  again.className = "secondary regenerate";
  again.textContent = "Regenerate";
  again.onclick = () => run(() => regenerate());
  last.append(again);
  last.scrollIntoView({ block: "end" });
}

async function loadList() {
  const { conversations } = await (await api("/conversations")).json();
  $("conversations").replaceChildren(...conversations.map((c) => {
    const item = document.createElement("li");
    const link = document.createElement("button");
    link.type = "button";
    link.textContent = c.title;
    link.dataset.id = c.id;
    if (c.id === current) link.setAttribute("aria-current", "true");
    link.onclick = () => run(() => open(c.id));
    item.append(link);
    return item;
  }));
}

function setTitle(title) {
  $("title").textContent = title;
  $("rename").hidden = $("delete").hidden = !current;
}

// The open conversation is named in the address (/#ID), as in every chat app: a reload or a bookmark opens
// it again, and Back returns to the one before.
function showInAddress(id) {
  if ((location.hash.slice(1) || null) !== id) history.pushState(null, "", id ? "#" + id : location.pathname);
}

async function open(id) {
  current = id;
  showInAddress(id);
  const conversation = await (await api("/conversations/" + encodeURIComponent(id))).json();
  $("messages").replaceChildren();
  conversation.messages.forEach(addMessage);
  markLastReply();
  setTitle(conversation.title);
  showList(false);
  await loadList();
}

async function stream(path, body) {
  const reply = addMessage({ role: "assistant", content: "" });
  const content = reply.querySelector(".content");
  const tail = document.createTextNode(""); // text that arrived after the last rendered HTML
  content.append(tail);
  let text = "", finish = "stopped", dropped = 0;
  streaming = new AbortController();
  setStreaming(true);
  try {
    const response = await api(path, { method: "POST", body: JSON.stringify(body), signal: streaming.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = JSON.parse(event.replace(/^data: /, ""));
        if (data.dropped !== undefined) dropped = data.dropped;
        if (data.text) { text += data.text; tail.textContent += data.text; }
        if (data.html !== undefined) { content.innerHTML = data.html; tail.textContent = ""; content.append(tail); }
        if (data.done) finish = data.reason;
      }
      reply.scrollIntoView({ block: "end" });
    }
  } catch (err) {
    if (err.name !== "AbortError") { reply.remove(); throw err; }
  } finally {
    streaming = null;
    setStreaming(false);
  }
  setNotes(reply, { finish, dropped, content: text });
  reply.dataset.done = "true";
  markLastReply();
  await loadList();
}

async function send(text) {
  if (!current) {
    const created = await (await api("/conversations", { method: "POST", body: JSON.stringify({ title: text.slice(0, 60) }) })).json();
    current = created.id;
    showInAddress(current);
    setTitle(created.title);
  }
  addMessage({ role: "user", content: text });
  await restoring(() => stream(`/conversations/${current}/messages`, { content: text }), text);
}

async function regenerate() {
  const items = $("messages").children;
  if (items.length && items[items.length - 1].className === "assistant") items[items.length - 1].remove();
  await restoring(() => stream(`/conversations/${current}/regenerate`, {}));
}

// A reply the box refused (busy, no model) changed nothing there: show what it holds, and give the owner
// their text back to send again.
async function restoring(action, text) {
  try { await action(); } catch (err) {
    if (text !== undefined && !$("prompt").value) $("prompt").value = text;
    await open(current).catch(() => {});
    throw err;
  }
}

function setStreaming(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("model-picker").disabled = on;
  document.querySelectorAll("#messages .regenerate").forEach((b) => { b.disabled = on; });
  if (on) $("stop").focus(); else $("prompt").focus();
}

async function run(action) {
  showError("");
  try { await action(); } catch (err) { showError(err.message); }
}

async function loadModels() {
  const { models } = await (await api("/models")).json();
  const picker = $("model-picker");
  if (!models.length) return;
  picker.replaceChildren(...models.map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.id;
    option.selected = m.served;
    return option;
  }));
}

async function chooseModel() {
  const picker = $("model-picker");
  const name = picker.value;
  picker.disabled = true;
  $("model-status").textContent = `Switching to ${name}; replies wait until it is loaded.`;
  try {
    const { model } = await (await api("/models/default", { method: "PUT", body: JSON.stringify({ model: name }) })).json();
    $("model-status").textContent = `Now serving ${model}.`;
  } catch (err) {
    $("model-status").textContent = "";
    throw err;
  } finally {
    picker.disabled = false;
    await loadModels();
  }
}

$("composer").onsubmit = (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || streaming) return;
  $("prompt").value = "";
  run(() => send(text));
};
$("prompt").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
};
$("stop").onclick = () => { if (streaming) streaming.abort(); };
$("new").onclick = () => {
  current = null;
  showInAddress(null);
  $("messages").replaceChildren();
  setTitle("New chat");
  showList(false);
  run(loadList);
};
$("rename").onclick = () => run(async () => {
  const title = prompt("A new name for this chat", $("title").textContent);
  if (title === null || !title.trim()) return;
  const renamed = await (await api("/conversations/" + current, { method: "PATCH", body: JSON.stringify({ title }) })).json();
  setTitle(renamed.title);
  await loadList();
});
$("delete").onclick = () => run(async () => {
  if (!confirm(`Delete "${$("title").textContent}" for good?`)) return;
  await api("/conversations/" + current, { method: "DELETE" });
  $("new").onclick();
});
function showList(shown) {
  document.body.classList.toggle("list-open", shown);
  $("show-list").setAttribute("aria-expanded", String(shown));
  (shown ? $("new") : $("prompt")).focus();
}
$("show-list").onclick = () => showList(true);
$("hide-list").onclick = () => showList(false);
$("model-picker").onchange = () => run(chooseModel);

// The conversation the address names (a reload, Back, a bookmark); one deleted since is said so, and the page
// is a new chat.
async function openAddressed() {
  const id = decodeURIComponent(location.hash.slice(1));
  if (!id) { if (current) $("new").onclick(); return; }
  try { await open(id); } catch (err) { $("new").onclick(); throw err; }
}
window.onpopstate = () => run(openAddressed);

run(() => Promise.all([loadList(), loadModels(), openAddressed()]));
// Send is enabled only now: on a slow box a click before this script ran would post the form natively
// (a reload to "/?") and lose the message.
$("send").disabled = false;
