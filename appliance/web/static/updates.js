// The owner's updates page: save the settings, ask for an update, upload a bundle, and follow the attempt
// (the page reloads when the updater reports that it ended).
import { $, call, megabytes, upload } from "./transfer.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const WORKING = ["starting", "fetch", "metadata", "unpack", "download", "write", "verify", "uki", "boot", "rebooting"];

function alarm(message) {
  $("updates-error").textContent = message;
  $("updates-error").hidden = false;
}

// Asks GET /update every two seconds while a request waits or an attempt runs; reloads once it ended.
async function follow() {
  for (;;) {
    await sleep(2000);
    const state = await call("GET", "/update").catch(() => null);
    if (!state) continue;  // the box is restarting into the new release, say
    const update = state.update || {};
    if (!state.pending && !WORKING.includes(update.phase)) { location.reload(); return; }
    const bytes = update.total ? `, ${megabytes(update.done || 0)} of ${megabytes(update.total)}` : "";
    $("phase").textContent = state.pending ? "Your request is waiting for the updater; it starts within a few seconds."
      : `Working: ${update.phase}${update.version ? ` (${update.version})` : ""}${bytes}.`;
  }
}

$("settings-form").onsubmit = async (event) => {
  event.preventDefault();
  $("updates-error").hidden = true;
  try {
    await call("PUT", "/update/settings", {
      url: $("update-url").value.trim(), automatic: $("update-automatic").checked, reboot: $("update-reboot").checked,
    });
    $("settings-status").textContent = "Saved.";
    location.reload();
  } catch (err) { alarm(`The settings were not saved: ${err.message}`); }
};

$("check").onclick = async () => {
  $("check").disabled = true;
  $("updates-error").hidden = true;
  try {
    await call("POST", "/update", { source: "online" });
    $("phase").textContent = "Your request is waiting for the updater; it starts within a few seconds.";
    follow();
  } catch (err) {
    alarm(`The update was not requested: ${err.message}`);
    $("check").disabled = false;
  }
};

$("upload-bundle").onclick = async () => {
  const file = $("bundle-file").files[0];
  if (!file) { alarm("Choose the bundle file first (the field above the button), then press Upload and install."); return; }
  const button = $("upload-bundle"), bar = $("bundle-progress");
  button.disabled = true;
  $("updates-error").hidden = true;
  bar.hidden = false;
  bar.max = file.size || 1;
  const report = (sent) => {
    bar.value = sent;
    $("bundle-status").textContent = `Uploading ${file.name}: ${megabytes(sent)} of ${megabytes(file.size)}.`;
  };
  report(0);
  try {
    await upload(button.dataset.path, file, report);
    $("bundle-status").textContent = "Uploaded; the updater checks its signatures and installs it.";
    follow();
  } catch (err) {
    bar.hidden = true;
    $("bundle-status").textContent = "";
    alarm(err.refused ? `The bundle was not accepted: ${err.message}`
      : `The upload stopped (${err.message}): check the connection to the box and press Upload and install again.`);
  } finally { button.disabled = false; }
};

if ($("phase").dataset.working === "yes") follow();
