// The chat page: conversations live on the box; the owner's session cookie authenticates, and every
// change carries the page's CSRF token.
const $ = (id) => document.getElementById(id);
const csrf = document.querySelector('meta[name="csrf"]').content;
let current = null;

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
  });
  if (response.status === 401) { location.assign("/login?next=/"); throw new Error("logged out"); }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? body.error.message : response.statusText);
  }
  return response;
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  $("messages").append(item);
  item.scrollIntoView();
  return item;
}

async function loadList() {
  const { conversations } = await (await api("/conversations")).json();
  $("conversations").replaceChildren(...conversations.map((c) => {
    const item = document.createElement("li");
    item.textContent = c.title;
    item.dataset.id = c.id;
    item.className = c.id === current ? "active" : "";
    item.onclick = () => open(c.id);
    return item;
  }));
}

async function open(id) {
  current = id;
  const conversation = await (await api("/conversations/" + id)).json();
  $("messages").replaceChildren();
  conversation.messages.forEach((m) => addMessage(m.role, m.content));
  await loadList();
}

async function send(text) {
  if (!current) {
    const created = await (await api("/conversations", { method: "POST", body: JSON.stringify({ title: text.slice(0, 60) }) })).json();
    current = created.id;
  }
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const response = await api(`/conversations/${current}/messages`, { method: "POST", body: JSON.stringify({ content: text }) });
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
      if (data.text) reply.textContent += data.text;
    }
  }
  reply.dataset.done = "true";
  await loadList();
}

$("composer").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  $("error").textContent = "";
  try { await send(text); } catch (err) { $("error").textContent = err.message; }
};
$("new").onclick = () => { current = null; $("messages").replaceChildren(); loadList(); };

loadList().catch((err) => { $("error").textContent = err.message; });
// Send is enabled only now: on a slow box a click before this script ran would post the form natively
// (a reload to "/?") and lose the message.
$("send").disabled = false;
