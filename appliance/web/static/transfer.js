// What the pages that move models and bundles share (an ES module): the page's CSRF token, the box's own
// error messages, its JSON API, a catalog download watched until it ends, and uploads with their progress.
export const $ = (id) => document.getElementById(id);
export const csrf = document.querySelector('meta[name="csrf"]').content;
export const megabytes = (n) => (n / 1e6).toFixed(1) + " MB";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const duration = (s) => (s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

// The box's explanation of a refusal ({"error": {"message": ...}}), or its status when it gave none.
export async function failure(response) {
  const body = await response.json().catch(() => ({}));
  return (body.error && body.error.message) || `the box answered ${response.status} ${response.statusText}`;
}

// One call of the box's JSON API as the owner; throws an Error carrying the box's message.
export async function call(method, url, body) {
  const headers = { "X-CSRF-Token": csrf };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) throw new Error(await failure(response));
  return response.json().catch(() => ({}));
}

// GET /models/download shown on `view` ({box, name, bar, status, stop}: elements) every second until it is
// no longer downloading; the last status, or null when the box could not be asked.
export async function watchDownload(view) {
  view.box.hidden = false;
  view.stop.onclick = () => call("DELETE", "/models/download").catch((err) => { view.status.textContent = err.message; });
  for (;;) {
    const response = await fetch("/models/download");
    if (!response.ok) { view.status.textContent = await failure(response); return null; }
    const job = await response.json();
    view.name.textContent = job.tier || "";
    view.bar.max = job.total || 1;
    view.bar.value = job.done || 0;
    view.status.textContent = `${megabytes(job.done || 0)} of ${megabytes(job.total || 0)}` +
      (job.speed ? `, ${megabytes(job.speed)}/s` : "") + (job.seconds_left != null ? `, ${duration(job.seconds_left)} left` : "");
    if (job.state === "failed") {
      view.status.textContent = `The download failed: ${job.error} Press Download to try again; it resumes where it stopped.`;
    }
    if (job.state === "stopped") {
      view.status.textContent = `Stopped at ${megabytes(job.done || 0)}. Press Download to go on where it stopped.`;
    }
    view.stop.hidden = job.state !== "downloading";
    if (job.state !== "downloading") return job;
    await sleep(1000);
  }
}

// Start downloading the catalog tier `tier` (one already running is watched instead) and watch it.
export async function download(tier, view) {
  const response = await fetch("/models/download", {
    method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ tier }),
  });
  if (!response.ok && response.status !== 409) {
    view.box.hidden = false;
    view.status.textContent = await failure(response);
    return null;
  }
  return watchDownload(view);
}

// A download started earlier (another tab, before a reload) is watched as soon as the page opens.
export async function resumeWatching(view) {
  const response = await fetch("/models/download").catch(() => null);
  const job = response && response.ok ? await response.json() : null;
  return job && job.state === "downloading" ? watchDownload(view) : null;
}

// PUT `file` to `url` as the request body (with `headers`), calling progress(sent, total) as it goes: the box's
// JSON answer, or an Error whose `refused` says whether the box said no (its message) or the transfer broke off.
export function upload(url, file, progress, headers = {}) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", url);
    request.setRequestHeader("X-CSRF-Token", csrf);
    for (const [name, value] of Object.entries(headers)) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => progress(event.loaded, event.lengthComputable ? event.total : file.size);
    request.onload = () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch { /* not JSON: a proxy's page, say */ }
      if (request.status >= 200 && request.status < 300) { resolve(body); return; }
      const err = new Error((body.error && body.error.message) || `the box answered ${request.status} ${request.statusText}`);
      err.refused = true;
      reject(err);
    };
    request.onerror = () => reject(new Error("the connection to the box broke off"));
    request.onabort = () => reject(new Error("the upload was cancelled"));
    request.send(file);
  });
}
