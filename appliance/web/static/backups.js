// The Backups page and the setup wizard's restore: confirm the recovery kit, back up now, the settings, and a
// restore (upload with its key, the box's summary of what it holds, confirm, wait for the box to come back).
import { $, call, megabytes, upload } from "./transfer.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const on = (id, event, handler) => { if ($(id)) $(id)[event] = handler; };

function alarm(message) {
  $("backups-error").textContent = message;
  $("backups-error").hidden = false;
}

on("print-kit", "onclick", () => window.print());

on("confirm-key-form", "onsubmit", async (event) => {
  event.preventDefault();
  const typed = $("confirm-key");
  try {
    await call("POST", "/backups/key", { group: Number(typed.dataset.group), typed: typed.value });
    location.reload();
  } catch (err) { alarm(err.message); }
});

on("back-up", "onclick", async () => {
  $("back-up").disabled = true;
  $("back-up-status").textContent = "Backing up and checking the backup…";
  try {
    const made = await call("POST", "/backups");
    $("back-up-status").textContent = `Done: ${made.name} (${megabytes(made.bytes)}).`;
    location.reload();
  } catch (err) {
    $("back-up-status").textContent = "";
    alarm(`No backup was made: ${err.message}`);
    $("back-up").disabled = false;
  }
});

on("new-key", "onclick", async () => {
  if (!confirm("Make a new recovery key? Backups made so far still need the current key: keep its kit.")) return;
  try { await call("DELETE", "/backups/key"); location.reload(); } catch (err) { alarm(err.message); }
});

// The stick helper works in the background: ask, then wait for its outcome (a copy of gigabytes takes minutes).
async function stick(path, body) {
  const since = (await call("GET", "/backups")).sticks.outcome?.time ?? 0;
  $("sticks-status").className = "hint";
  $("sticks-status").textContent = "The box is at it…";
  try {
    await call("POST", path, body);
    for (;;) {
      await sleep(1000);
      const now = (await call("GET", "/backups")).sticks;
      if (!now.pending && now.outcome && now.outcome.time > since) break;
    }
    location.reload();
  } catch (err) { alarm(`USB stick: ${err.message}`); }
}

on("look-for-sticks", "onclick", () => stick("/backups/sticks"));

for (const button of document.querySelectorAll(".copy-to-stick")) {
  button.onclick = () => stick(`/backups/files/${encodeURIComponent(button.dataset.name)}/stick`, { stick: button.dataset.stick });
}

on("seal-form", "onsubmit", async (event) => {
  event.preventDefault();
  if ($("passphrase").value !== $("passphrase-again").value) { alarm("The two passphrases differ: type them again."); return; }
  $("seal").disabled = true;
  $("seal-status").textContent = "Sealing the key (a few seconds)…";
  try {
    await call("PUT", "/backups/sealed-key", { passphrase: $("passphrase").value });
    location.reload();
  } catch (err) {
    $("seal-status").textContent = "";
    alarm(`The key was not sealed: ${err.message}`);
    $("seal").disabled = false;
  }
});

on("unseal", "onclick", async () => {
  if (!confirm("Remove the sealed key from the box? Copies of it you kept still open your backups with the passphrase.")) return;
  try { await call("DELETE", "/backups/sealed-key"); location.reload(); } catch (err) { alarm(err.message); }
});

on("backup-settings", "onsubmit", async (event) => {
  event.preventDefault();
  try {
    await call("PUT", "/backups/settings", {
      schedule: $("backup-schedule").checked, identity: $("backup-identity").checked,
      models: $("backup-models").checked, keep: Number($("backup-keep").value), days: Number($("backup-days").value),
    });
    $("backup-settings-status").textContent = "Saved.";
  } catch (err) { alarm(`The settings were not saved: ${err.message}`); }
});

function show(preview) {
  const facts = [["Made", preview.created], ["Box", preview.box], ["Release", preview.product],
    ["Owner", preview.owner || "none yet"], ["Conversations", `${preview.conversations} (${preview.messages} messages)`],
    ["API tokens", preview.tokens], ["Size", megabytes(preview.bytes)]];
  $("restore-facts").replaceChildren(...facts.flatMap(([name, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = String(value);
    return [dt, dd];
  }));
  $("restore-preview").hidden = false;
}

on("restore-upload", "onclick", async () => {
  const file = $("restore-file").files[0];
  if (!file) { alarm("Choose the backup file first, then press Check the backup."); return; }
  const key = $("restore-key").value.replace(/\s+/g, "");
  const passphrase = $("restore-passphrase").value, sealed = $("restore-sealed-file").files[0];
  if (!key && !passphrase) { alarm("Type or paste the recovery key first (or the sealed key's passphrase)."); return; }
  // A passphrase opens the sealed key sent with it, or (on the box that made the backup) the box's own.
  const given = passphrase ? { "X-Passphrase": encodeURIComponent(passphrase) } : { "X-Recovery-Key": key };
  if (passphrase && sealed) {
    if (sealed.size > 4096) { alarm(`${sealed.name} is not a sealed key: those are about 400 bytes.`); return; }
    given["X-Sealed-Key"] = btoa(String.fromCharCode(...new Uint8Array(await sealed.arrayBuffer())));
  }
  $("backups-error").hidden = true;
  $("restore-upload").disabled = true;
  const bar = $("restore-progress");
  bar.hidden = false;
  bar.max = file.size || 1;
  try {
    const preview = await upload($("restore-upload").dataset.path, file, (sent, total) => {
      bar.value = sent;
      $("restore-status").textContent = sent < total ? `${megabytes(sent)} of ${megabytes(total)}` : "Checking the backup…";
    }, { ...given, "X-Backup-Name": file.name });
    $("restore-status").textContent = "The backup is whole and opens with this key.";
    show(preview);
  } catch (err) {
    $("restore-status").textContent = "";
    alarm(`Nothing was restored: ${err.message}`);
  } finally {
    bar.hidden = true;
    $("restore-upload").disabled = false;
  }
});
// Enabled only now: a click before this script ran (a slow box, a page opened from a link) would do nothing.
if ($("restore-upload")) $("restore-upload").disabled = false;

for (const button of document.querySelectorAll(".restore-this")) {
  button.onclick = async () => {
    try {
      show(await call("POST", `/backups/files/${encodeURIComponent(button.dataset.name)}/restore`));
      $("restore").scrollIntoView();
    } catch (err) { alarm(`Nothing was restored: ${err.message}`); }
  };
}

on("restore-cancel", "onclick", async () => {
  await call("DELETE", "/backups/restore").catch(() => null);
  location.reload();
});

on("restore-confirm", "onclick", async () => {
  $("restore-confirm").disabled = true;
  try {
    await call("POST", "/backups/restore/confirm");
  } catch (err) {
    alarm(`Nothing was restored: ${err.message}`);
    $("restore-confirm").disabled = false;
    return;
  }
  $("restore-status").textContent = "Restoring: the box restarts, and this page goes to the login when it is back.";
  await sleep(3000);
  for (;;) {
    const health = await fetch("/health").catch(() => null);
    if (health && health.ok) { location.assign("/login"); return; }
    await sleep(2000);
  }
});
