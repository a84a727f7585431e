// The owner's models page: choose the served model, delete one, download from the catalog, import a file.
// Every change reloads the page, which the box renders as it now is.
import { $, call, download, megabytes, resumeWatching, upload } from "./transfer.js";

const view = { box: $("download"), name: $("download-name"), bar: $("download-progress"), status: $("download-status"),
  stop: $("download-stop") };
const reloadWhenDone = (job) => { if (job && job.state === "done") location.reload(); };

function alarm(message) {
  $("models-error").textContent = message;
  $("models-error").hidden = false;
}

// Runs `action` with every button of the page disabled, so a second click cannot cross the first.
async function busy(action) {
  const buttons = [...document.querySelectorAll("main button")];
  buttons.forEach((b) => { b.disabled = true; });
  $("models-error").hidden = true;
  try { await action(); } finally { buttons.forEach((b) => { b.disabled = false; }); }
}

for (const button of document.querySelectorAll("button.use")) {
  button.onclick = () => busy(async () => {
    const name = button.dataset.model;
    $("use-status").textContent = `Loading ${name}; the chat goes on with the current model until it is ready.`;
    try {
      await call("PUT", "/models/default", { model: name });
      location.reload();
    } catch (err) {
      $("use-status").textContent = "";
      alarm(`${name} was not chosen: ${err.message}`);
    }
  });
}

for (const button of document.querySelectorAll("button.delete")) {
  button.onclick = () => {
    const name = button.dataset.model;
    if (!confirm(`Delete ${name} from this box? Downloading or importing it again is the only way back.`)) return;
    return busy(async () => {
      try {
        await call("DELETE", "/models/" + encodeURIComponent(name));
        location.reload();
      } catch (err) { alarm(`${name} was not deleted: ${err.message}`); }
    });
  };
}

for (const button of document.querySelectorAll("button.download")) {
  button.onclick = async () => reloadWhenDone(await download(button.dataset.tier, view));
}

$("upload").onclick = () => {
  const file = $("upload-file").files[0];
  if (!file) { alarm("Choose a .gguf file first (the Model file field), then press Import."); return; }
  return busy(async () => {
    const bar = $("upload-progress");
    bar.hidden = false;
    bar.max = file.size || 1;
    const report = (sent) => {
      bar.value = sent;
      $("upload-status").textContent = `Importing ${file.name}: ${megabytes(sent)} of ${megabytes(file.size)}; the box checks it as it arrives.`;
    };
    report(0);
    try {
      await upload("/models/upload?name=" + encodeURIComponent(file.name), file, report);
      location.reload();
    } catch (err) {
      bar.hidden = true;
      $("upload-status").textContent = "";
      alarm(err.refused ? `${file.name} was not imported: ${err.message}`
        : `The import stopped (${err.message}): check the connection to the box and press Import again.`);
    }
  });
};

resumeWatching(view).then(reloadWhenDone);
