// The setup wizard's model step: a catalog download with a live progress bar, or a file uploaded from
// this computer; either way the page reloads when the model is on the box, to offer it.
import { $, download, megabytes, resumeWatching, upload } from "./transfer.js";

const view = { box: $("download"), name: $("download-name"), bar: $("download-progress"), status: $("download-status"),
  stop: $("download-stop") };
const reloadWhenDone = (job) => { if (job && job.state === "done") location.reload(); };

for (const button of document.querySelectorAll("button.download")) {
  button.onclick = async () => reloadWhenDone(await download(button.dataset.tier, view));
}

$("upload").onclick = async () => {
  const file = $("upload-file").files[0];
  if (!file) { $("upload-status").textContent = "Choose a .gguf file first."; return; }
  $("upload").disabled = true;
  const status = (sent) => `Uploading ${file.name}: ${megabytes(sent)} of ${megabytes(file.size)}; the box checks it as it arrives.`;
  $("upload-status").textContent = status(0);
  try {
    await upload("/models/upload?name=" + encodeURIComponent(file.name), file, (sent) => {
      $("upload-status").textContent = status(sent);
    });
    location.reload();
  } catch (err) {
    $("upload-status").textContent = err.refused ? `The upload was refused: ${err.message}`
      : `The upload stopped (${err.message}): check the connection and try again.`;
  } finally { $("upload").disabled = false; }
};

resumeWatching(view).then(reloadWhenDone);
