// The setup wizard's model step: a catalog download with a live progress bar, or a file uploaded from
// this computer; either way the page reloads when the model is on the box, to offer it.
const $ = (id) => document.getElementById(id);
const csrf = document.querySelector('meta[name="csrf"]').content;
const megabytes = (n) => (n / 1e6).toFixed(1) + " MB";

async function failure(response) {
  const body = await response.json().catch(() => ({}));
  return (body.error && body.error.message) || `the box answered ${response.status} ${response.statusText}`;
}

async function watchDownload() {
  $("download").hidden = false;
  for (;;) {
    const response = await fetch("/models/download");
    if (!response.ok) { $("download-status").textContent = await failure(response); return; }
    const job = await response.json();
    $("download-name").textContent = job.tier || "";
    $("download-progress").max = job.total || 1;
    $("download-progress").value = job.done || 0;
    $("download-status").textContent = `${megabytes(job.done || 0)} of ${megabytes(job.total || 0)}`;
    if (job.state === "done") { location.reload(); return; }
    if (job.state === "failed") {
      $("download-status").textContent = `The download failed: ${job.error} Press Download to try again; it resumes where it stopped.`;
      return;
    }
    if (job.state !== "downloading") return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

for (const button of document.querySelectorAll("button.download")) {
  button.onclick = async () => {
    const response = await fetch("/models/download", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ tier: button.dataset.tier }),
    });
    if (!response.ok && response.status !== 409) { $("download").hidden = false; $("download-status").textContent = await failure(response); return; }
    await watchDownload();
  };
}

$("upload").onclick = async () => {
  const file = $("upload-file").files[0];
  if (!file) { $("upload-status").textContent = "Choose a .gguf file first."; return; }
  $("upload").disabled = true;
  $("upload-status").textContent = `Uploading ${file.name} (${megabytes(file.size)}); the box checks it as it arrives.`;
  try {
    const response = await fetch("/models/upload?name=" + encodeURIComponent(file.name), {
      method: "PUT", headers: { "X-CSRF-Token": csrf }, body: file,
    });
    if (!response.ok) { $("upload-status").textContent = `The upload was refused: ${await failure(response)}`; return; }
    location.reload();
  } catch (err) {
    $("upload-status").textContent = `The upload stopped (${err.message}): check the connection and try again.`;
  } finally { $("upload").disabled = false; }
};

fetch("/models/download").then((r) => r.ok && r.json()).then((job) => job && job.state === "downloading" && watchDownload());
