// imagepipe's upload page. Each file is sent with XMLHttpRequest (for real upload progress)
// under its own Idempotency-Key; its ticket is then followed live (Server-Sent Events, or
// polling that honours Retry-After and ETag) until the photo is processed and backed up.
// Files above the server's resumable_above_bytes go through tus instead (tus-js-client, see
// "resumable uploads" below): a dropped link or a reload goes on from the server's offset.
// Uploads, the gallery and photo details carry the page's grant (see "the grant" below);
// ticket polls and event streams need none: a ticket's URL is its capability.

const UPLOAD_SLOTS = 2; // files sent at once
// EventSources held at once. Over HTTP/1.1 a browser opens six connections per host: more
// streams would starve uploads and thumbnails, so further tickets join the batch poller.
const STREAM_SLOTS = 3;
const POLL_FLOOR_S = 1;
const POLL_CAP_S = 30;
const BACKUP_PATIENCE_S = 15 * 60; // the replication target; past it, stop asking
const BATCH = 100; // the most ids GET /tickets takes at once
const GALLERY_PAGE = 12;
const CONFLICT_RETRIES = 20;
// the file itself (or what the grant allows) is the problem: no retry
const REFUSED = new Set([400, 403, 413, 415, 422]);
const TERMINAL = new Set(["completed", "failed"]);
const PREVIEWABLE = new Set(["image/jpeg", "image/png", "image/gif", "image/webp", "image/avif"]);
const FALLBACK_CONFIG = {
  max_upload_bytes: Infinity,
  media_types: [],
  extensions: [],
  formats: [],
  format_labels: [],
  sizes: [],
  embed_origins: [],
  resumable_above_bytes: Infinity, // without the server's word, every file is one POST
  chunk_bytes: 8 * 1024 * 1024,
};

const $ = (selector, root = document) => root.querySelector(selector);
const JSON_HEADERS = { Accept: "application/json" };

// Without the limits the page still works: the server judges every file anyway.
const config = fetch("/ui/config", { headers: JSON_HEADERS })
  .then((response) => (response.ok ? response.json() : FALLBACK_CONFIG))
  .catch(() => FALLBACK_CONFIG);
let currentConfig = FALLBACK_CONFIG; // the same, once loaded, for code that cannot wait
config.then((loaded) => {
  currentConfig = loaded;
});

// -- small helpers ----------------------------------------------------------------------

function formatBytes(count) {
  const units = ["bytes", "KB", "MB", "GB"];
  let value = Number(count);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 10 ? 0 : 1;
  return `${value.toFixed(digits).replace(/\.0$/, "")} ${units[unit]}`;
}

// The server's own labels (WebP, not WEBP): the page and its refusals name formats alike.
function listFormats(limits) {
  const names = limits.format_labels ?? limits.formats;
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names.at(-1)}` : names[0] ?? "";
}

function sentence(text) {
  const trimmed = String(text).trim();
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; a LAN address over plain http gets a v4 UUID by hand
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function retryAfterSeconds(value) {
  const seconds = Number(value);
  return Number.isFinite(seconds) && seconds > 0 ? seconds : 0;
}

function isTerminal(ticket) {
  return Boolean(ticket) && TERMINAL.has(ticket.status);
}

// -- the grant: who the page uploads as ---------------------------------------------------
// `imagepipe dev` needs none (the API takes a request without one as the owner "local").
// In production the web tier hands the page a grant, never in a URL (logs, Referer, history):
// - serving the page's HTML itself (through the same origin): <meta name="imagepipe-grant">;
// - framing the page (an origin in IMAGEPIPE_PAGE_EMBED_ORIGINS): the page posts
//   {type: "imagepipe:grant-needed"} to its parent, which answers with
//   {type: "imagepipe:grant", grant: "<JWT>"}; asked again when the grant is about to end or
//   is refused, so a long session renews itself.

const GRANT_WAIT_MS = 5000; // how long a request waits for the embedding page's answer
const GRANT_MARGIN_S = 30; // a grant this close to its end is renewed before it is used

function expiresAt(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return Number(JSON.parse(atob(payload)).exp) || 0;
  } catch {
    return 0; // not ours to judge: the server will say
  }
}

const grant = {
  token: $('meta[name="imagepipe-grant"]')?.content || null,
  asking: null, // the pending ask: every request waiting for a grant shares it
  answer: null,

  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  },

  stale() {
    const exp = this.token ? expiresAt(this.token) : 0;
    return !this.token || (exp > 0 && exp - GRANT_MARGIN_S < Date.now() / 1000);
  },

  // Ask the embedding page for a grant; true once a fresh one arrived.
  async ask() {
    const { embed_origins: origins = [] } = await config;
    if (window.parent === window || !origins.length) return false;
    this.asking ??= new Promise((resolve) => {
      this.answer = resolve;
      for (const origin of origins) window.parent.postMessage({ type: "imagepipe:grant-needed" }, origin);
      setTimeout(() => resolve(false), GRANT_WAIT_MS);
    }).finally(() => {
      this.asking = null;
    });
    return this.asking;
  },

  receive(event) {
    const data = event.data;
    if (event.source !== window.parent || data?.type !== "imagepipe:grant") return;
    if (!currentConfig.embed_origins.includes(event.origin) || typeof data.grant !== "string") return;
    this.token = data.grant;
    $("#grant-status").hidden = true;
    this.answer?.(true);
  },

  async ready() {
    if (this.stale()) await this.ask();
  },

  // The server refused the grant (401): renew it, or say plainly what to do.
  async refused(detail) {
    if (await this.ask()) return true;
    const why = this.token ? "Your sign-in has expired" : "This page needs you to be signed in";
    $("#grant-status").textContent = `${why}: open it again from the site you came from. (${detail})`;
    $("#grant-status").hidden = false;
    return false;
  },
};

window.addEventListener("message", (event) => grant.receive(event));

// fetch() with the grant, renewed once when the server refuses it.
async function fetchWithGrant(url, options = {}) {
  await grant.ready();
  const send = () => fetch(url, { ...options, headers: { ...options.headers, ...grant.headers() } });
  const response = await send();
  if (response.status !== 401) return response;
  const problem = await response.clone().json().catch(() => ({}));
  return (await grant.refused(problem.detail ?? "401")) ? send() : response;
}

// -- announcements for screen readers (batched: three completions make one message) -------

const announcer = { pending: [], timer: 0 };

function announce(message) {
  announcer.pending.push(message);
  clearTimeout(announcer.timer);
  announcer.timer = setTimeout(() => {
    $("#announcer").textContent = announcer.pending.join(". ");
    announcer.pending = [];
  }, 400);
}

// -- client-side checks: mirror the server's limits, refuse early, let it judge the rest ---

function refusal(file, limits) {
  if (file.size === 0) return "This file is empty.";
  const extension = `.${file.name.split(".").pop().toLowerCase()}`;
  const known = limits.media_types.includes(file.type) || limits.extensions.includes(extension);
  // an unknown type ("") goes to the server, which sniffs the bytes; a known other type stops
  if (!known && file.type !== "" && limits.formats.length) {
    return `Not a photo we accept. Send ${listFormats(limits)}.`;
  }
  if (file.size > limits.max_upload_bytes) {
    return `Too large: ${formatBytes(file.size)}, and the limit is ${formatBytes(limits.max_upload_bytes)}.`;
  }
  return null;
}

function problemText(result) {
  const body = result.body && typeof result.body === "object" ? result.body : {};
  const detail = body.detail || body.title || `the server answered ${result.status}`;
  return sentence(detail.replace(/(\d{4,}) bytes/g, (_, n) => formatBytes(n)));
}

// -- sizes: which rung makes a thumbnail, which one a link --------------------------------

function sizeNames(available) {
  const ladder = currentConfig.sizes.filter((s) => available.includes(s.name));
  const plain = ladder.filter((s) => !s.crop).sort((a, b) => a.edge - b.edge);
  if (!plain.length) return { thumb: available[0], thumb2x: available[0], large: available[0] };
  const big = plain.findIndex((s) => s.edge >= 240); // sharp in a tile of ~100-200 px
  const thumbIndex = big === -1 ? plain.length - 1 : big;
  const thumb2x = plain[Math.min(plain.length - 1, thumbIndex + 1)];
  return { thumb: plain[thumbIndex].name, thumb2x: thumb2x.name, large: plain.at(-1).name };
}

// -- one card per file --------------------------------------------------------------------

class Card {
  constructor(file) {
    this.file = file;
    this.key = newKey(); // kept across retries: however often it is sent, one photo
    this.ticket = null;
    this.conflicts = 0;
    this.renewals = 0; // grants asked for after a 401
    this.el = $("#card-template").content.firstElementChild.cloneNode(true);
    this.part(".card-name").textContent = file.name;
    this.part(".card-name").title = file.name;
    this.part(".card-meta").textContent = formatBytes(file.size);
    this.part("progress").setAttribute("aria-label", `Upload of ${file.name}`);
    const retry = this.part(".retry");
    retry.setAttribute("aria-label", `Retry upload of ${file.name}`);
    retry.addEventListener("click", () => this.retry());
    this.show("waiting", "Waiting");
  }

  part(selector) {
    return $(selector, this.el);
  }

  show(state, pill, detail = "") {
    const changed = this.el.dataset.state !== state;
    this.el.dataset.state = state;
    this.part(".pill").textContent = pill;
    this.part(".detail").textContent = detail;
    if (changed) updateSummary();
  }

  progress(fraction) {
    const percent = Math.round(Math.min(1, fraction) * 100);
    this.part("progress").value = percent;
    this.part(".percent").textContent = `${percent}%`;
  }

  preview() {
    if (!PREVIEWABLE.has(this.file.type) || this.previewUrl) return;
    const img = this.part(".preview");
    this.previewUrl = URL.createObjectURL(this.file);
    img.addEventListener("error", () => this.dropPreview(), { once: true });
    img.src = this.previewUrl;
    img.hidden = false;
  }

  dropPreview() {
    if (!this.previewUrl) return;
    URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = null;
    this.part(".preview").hidden = true;
  }

  uploading() {
    this.progress(0);
    this.preview();
    this.show("uploading", "Uploading", "");
  }

  // A resumable upload found the server's offset (HEAD): the bar starts there, not at 0.
  resumedAt(offset) {
    if (!Number.isFinite(offset)) return;
    this.el.dataset.resumedFrom = String(offset);
    this.progress(offset / this.file.size);
    const where = `${formatBytes(offset)} of ${formatBytes(this.file.size)}`;
    this.show("uploading", "Uploading", offset ? `Resuming: the server has ${where}.` : "");
  }

  refuse(reason) {
    this.show("refused", "Refused", reason);
    this.part(".card-progress").hidden = true;
    announce(`${this.file.name}: refused. ${reason}`);
  }

  fail(reason) {
    this.show("error", "Not sent", `${reason} Your file is safe to send again.`);
    this.part(".retry").hidden = false;
    announce(`${this.file.name}: upload failed`);
  }

  retry() {
    this.renewals = 0; // the person may have signed in again meanwhile
    this.part(".retry").hidden = true;
    this.el.focus(); // the button is gone: keep keyboard focus on this card
    this.show("waiting", "Waiting", "Trying again…");
    uploads.add(this);
  }

  // Apply a ticket from any source (upload answer, stream, poll); older versions are ignored.
  update(ticket) {
    if (this.ticket && ticket.version < this.ticket.version) return false;
    const before = this.ticket;
    this.ticket = ticket;
    this.el.dataset.ticket = ticket.id;
    this.el.dataset.photo = ticket.photo_id;
    this.el.dataset.backup = ticket.backup;
    const [pill, detail] = describe(ticket);
    this.show(ticket.status, pill, detail);
    this.part(".detail").title = ticket.error ?? ""; // the server's own words, on hover
    if (ticket.status === "completed") photoSizes(ticket).then((sizes) => this.showPhoto(sizes));
    this.part(".backup").hidden = !(ticket.status === "completed" && ticket.backup === "completed");
    if (!isTerminal(before) && isTerminal(ticket)) announce(`${this.file.name}: ${pill}. ${detail}`);
    return true;
  }

  showPhoto(sizes) {
    const link = this.part(".thumb-link");
    if (!link.hidden || !Object.keys(sizes).length) return;
    const names = sizeNames(Object.keys(sizes));
    const img = this.part(".thumb");
    img.alt = this.file.name;
    img.addEventListener("load", () => this.dropPreview(), { once: true });
    img.srcset = `${sizes[names.thumb].url} 1x, ${sizes[names.thumb2x].url} 2x`;
    img.src = sizes[names.thumb].url;
    link.href = sizes[names.large].url;
    link.setAttribute("aria-label", `Open ${this.file.name}, largest size`);
    link.hidden = false;
    this.showSizeLinks(sizes);
  }

  showSizeLinks(sizes) {
    const holder = this.part(".card-sizes");
    holder.replaceChildren("Sizes:");
    const byArea = Object.entries(sizes).sort(([, a], [, b]) => a.width * a.height - b.width * b.height);
    const shown = new Set(); // a small photo is never upscaled: several rungs can be one size
    for (const [name, size] of byArea) {
      const label = `${size.width}×${size.height}`;
      if (shown.has(label)) continue;
      shown.add(label);
      const a = document.createElement("a");
      a.href = size.url;
      a.textContent = label;
      a.title = `size ${name}`;
      holder.append(a);
    }
    holder.hidden = false;
  }
}

// A completed photo's sizes: the owner's view (GET /photos/{id}: signed URLs for a private
// photo) where the server gives one, else the ticket's own URLs. Asked once per photo.
const details = new Map(); // photo id -> Promise of its sizes

function photoSizes(ticket) {
  if (!details.has(ticket.photo_id)) details.set(ticket.photo_id, ownerSizes(ticket));
  return details.get(ticket.photo_id);
}

const urlOf = (size) => (typeof size === "string" ? size : size?.url);

async function ownerSizes(ticket) {
  const sizes = ticket.photo?.sizes ?? {};
  let found = {};
  try {
    const response = await fetchWithGrant(`/photos/${ticket.photo_id}`, { headers: JSON_HEADERS });
    if (response.ok) found = (await response.json()).sizes ?? {};
  } catch {
    // offline for a moment: the ticket's URLs will do
  }
  const merged = Object.entries(sizes).map(([name, size]) => [name, { ...size, url: urlOf(found[name]) ?? size.url }]);
  return Object.fromEntries(merged);
}

function describe(ticket) {
  switch (ticket.status) {
    case "queued":
      return ["Queued", "Uploaded; waiting for a worker…"];
    case "processing":
      return ["Processing", "Making every size…"];
    case "completed":
      return ["Completed", dimensions(ticket.photo)];
    default:
      return ["Failed", failure(ticket.error || "")];
  }
}

// The worker's reasons are written for operators; say the common ones in plain words.
const FAILURES = [
  [/decodable|truncated|corrupt|broken/i, "The file is damaged or incomplete: it cannot be read as a photo."],
  [/allowed format|accepted format/i, "This is not a photo in a format we accept."],
  [/pixels/i, "The photo has more pixels than we can process."],
  [/took longer than/i, "The photo took too long to decode."],
  [/gave up after/i, "Processing kept failing on our side; please try again later."],
];

function failure(reason) {
  const known = FAILURES.find(([pattern]) => pattern.test(reason));
  return known ? known[1] : `Could not be processed: ${sentence(reason || "no reason given")}`;
}

// The photo's own size, upright: not its largest derivative, which may be smaller.
function dimensions(photo) {
  return photo?.width ? `${photo.width} × ${photo.height} px` : "";
}

let skippedFiles = 0; // from folders: hidden files and files that are not photos

function updateSummary() {
  const cards = [...document.querySelectorAll("#uploads .card")];
  const count = (states) => cards.filter((c) => states.includes(c.dataset.state)).length;
  const parts = [`${cards.length} ${cards.length === 1 ? "file" : "files"}`];
  const done = count(["completed"]);
  const busy = count(["waiting", "uploading", "queued", "processing"]);
  const bad = count(["failed", "refused", "error"]);
  if (done) parts.push(`${done} completed`);
  if (busy) parts.push(`${busy} in progress`);
  if (bad) parts.push(`${bad} not processed`);
  if (skippedFiles) parts.push(`${skippedFiles} skipped (not photos)`);
  const summary = $("#summary");
  summary.textContent = parts.join(" · ");
  summary.hidden = cards.length === 0 && !skippedFiles;
}

// -- uploads: a few at a time, each one XMLHttpRequest for its upload progress events ------

const uploads = {
  queue: [],
  active: 0,

  add(card) {
    this.queue.push(card);
    this.pump();
  },

  pump() {
    while (this.active < UPLOAD_SLOTS && this.queue.length) {
      const card = this.queue.shift();
      this.active += 1;
      upload(card).finally(() => {
        this.active -= 1;
        this.pump();
      });
    }
  },
};

function send(card) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/photos");
    xhr.setRequestHeader("Idempotency-Key", card.key);
    xhr.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(grant.headers())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && card.progress(e.loaded / e.total));
    xhr.upload.addEventListener("load", () => card.progress(1));
    xhr.addEventListener("load", () =>
      resolve({ status: xhr.status, body: xhr.response, retryAfter: xhr.getResponseHeader("Retry-After") }),
    );
    xhr.addEventListener("error", () => resolve({ status: 0 }));
    const form = new FormData();
    form.append("file", card.file, card.file.name);
    xhr.send(form);
  });
}

// -- resumable uploads: tus-js-client (vendored: /static/tus.min.js, see its .pin) ----------
// A file larger than resumable_above_bytes goes to /uploads/ in PATCHes of chunk_bytes. Its
// upload URL is kept in localStorage under the file's fingerprint (name, type, size, last
// modified, endpoint): after a dropped link (retried here) or a reload (the same file chosen
// again) tus-js-client asks HEAD where the server stands and goes on from that offset. The
// last PATCH's answer links the ticket (Link: </tickets/{id}>; rel="ticket"); so does HEAD
// on a finished upload, so a reload after the last byte still finds its one photo.

const RESUME_DELAYS_MS = [0, 1000, 3000, 5000, 10000];
const TICKET_LINK = /<[^>]*\/tickets\/([^/>]+)>\s*;\s*rel="?ticket"?/;

function goesResumably(file, limits) {
  return Boolean(window.tus?.isSupported) && file.size > limits.resumable_above_bytes;
}

function tusAnswer(error) {
  const response = error?.originalResponse;
  if (!response) return { status: 0 };
  let body = null;
  try {
    body = JSON.parse(response.getBody());
  } catch {
    // not problem+json: the status says enough
  }
  return { status: response.getStatus(), body, retryAfter: response.getHeader("Retry-After") };
}

// The ticket the upload's last answer links to, as POST /photos would have answered it.
async function linkedTicket(response) {
  const id = TICKET_LINK.exec(response.getHeader("Link") ?? "")?.[1];
  if (!id) return { status: 502, body: { detail: "the upload finished without a ticket" } };
  try {
    const answer = await fetch(`/tickets/${id}`, { headers: JSON_HEADERS, cache: "no-store" });
    if (answer.ok) return { status: 202, body: await answer.json() };
  } catch {
    // offline for a moment: the poller asks again
  }
  return { status: 202, body: { id, status: "queued", version: -1, photo_id: null } };
}

function tusOptions(card, limits, resolve) {
  return {
    endpoint: new URL("/uploads/", window.location.href).href,
    chunkSize: limits.chunk_bytes,
    retryDelays: RESUME_DELAYS_MS,
    metadata: { filename: card.file.name, filetype: card.file.type || "application/octet-stream" },
    removeFingerprintOnSuccess: true,
    // the grant as it is now (it may have been renewed since the upload started)
    onBeforeRequest: (request) => {
      for (const [name, value] of Object.entries(grant.headers())) request.setHeader(name, value);
    },
    onAfterResponse: (request, response) => {
      const offset = Number(response.getHeader("Upload-Offset"));
      if (request.getMethod() === "HEAD" && response.getStatus() === 200) card.resumedAt(offset);
    },
    onShouldRetry: (error, attempt, options) => {
      const again = window.tus.defaultOptions.onShouldRetry(error, attempt, options);
      if (again) card.show("uploading", "Uploading", "The connection dropped; resuming…");
      return again;
    },
    onProgress: (sent, total) => card.progress(sent / total),
    onSuccess: ({ lastResponse }) => linkedTicket(lastResponse).then(resolve),
    onError: (error) => {
      const answer = tusAnswer(error);
      // refused for its bytes, or gone: nothing to resume (a grant's 401/403 is not the file's)
      const final = answer.status === 404 || (REFUSED.has(answer.status) && answer.status !== 403);
      (final ? forgetUpload(card.file, limits) : Promise.resolve()).finally(() => resolve(answer));
    },
  };
}

// Drop a file's stored upload URLs (tus-js-client drops them itself only on success).
async function forgetUpload(file, limits) {
  const { urlStorage, fingerprint } = window.tus.defaultOptions;
  try {
    const options = tusOptions({ file }, limits, () => {});
    for (const previous of await urlStorage.findUploadsByFingerprint(await fingerprint(file, options))) {
      await urlStorage.removeUpload(previous.urlStorageKey);
    }
  } catch {
    // storage unavailable: a stale URL only costs a HEAD answered 404 later
  }
}

async function sendResumably(card, limits) {
  card.resumable = true;
  const answer = await new Promise((resolve) => {
    const upload = new window.tus.Upload(card.file, tusOptions(card, limits, resolve));
    upload
      .findPreviousUploads()
      .catch(() => [])
      .then((previous) => {
        const newest = previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime))[0];
        if (newest) upload.resumeFromPreviousUpload(newest);
        upload.start();
      });
  });
  showUnfinished(); // what is left to resume, now that this one ended
  return answer;
}

// After a reload: name the files whose uploads can go on (choosing them again resumes them).
async function showUnfinished() {
  if (!window.tus?.canStoreURLs) return;
  const previous = await window.tus.defaultOptions.urlStorage.findAllUploads().catch(() => []);
  const busy = [...document.querySelectorAll('#uploads .card:is([data-state="waiting"], [data-state="uploading"])')];
  const sending = new Set(busy.map((card) => $(".card-name", card).textContent));
  const names = [...new Set(previous.map((p) => p.metadata?.filename))].filter((n) => n && !sending.has(n));
  const hint = $("#resume-hint");
  hint.textContent = `Unfinished: ${names.join(", ")}. Choose the same file again to go on where it stopped.`;
  hint.hidden = !names.length;
}

async function upload(card) {
  card.uploading();
  await grant.ready();
  const limits = await config;
  const result = goesResumably(card.file, limits) ? await sendResumably(card, limits) : await send(card);
  if (result.status === 401 && card.renewals++ < 1 && (await grant.refused(problemText(result)))) {
    uploads.add(card); // a fresh grant came: the same key again, so still one photo
  } else if (result.status === 401) {
    card.fail(`Not signed in: ${problemText(result)}`);
  } else if ((result.status === 202 || result.status === 200) && result.body?.id) {
    render(card, result.body);
    follow(card);
  } else if (result.status === 202 || result.status === 200) {
    card.fail("The server's answer was cut off.");
  } else if (result.status === 409 && card.conflicts++ < CONFLICT_RETRIES) {
    // the same key is still in flight (an earlier try the server is finishing): wait for it
    card.show("waiting", "Waiting", "An earlier try is still arriving…");
    setTimeout(() => uploads.add(card), (retryAfterSeconds(result.retryAfter) || 1) * 1000);
  } else if (REFUSED.has(result.status)) {
    card.refuse(problemText(result));
  } else if (result.status === 0 && card.resumable) {
    card.fail("The connection dropped; Retry goes on from where it stopped.");
  } else if (result.status === 0) {
    card.fail("The connection dropped before the upload finished.");
  } else {
    card.fail(`The server could not take it: ${problemText(result)}`);
  }
}

// -- following tickets: a stream while slots last, else (or after a failure) polling -------

const streams = { open: 0, work: "EventSource" in window };

function render(card, ticket) {
  if (card.update(ticket) && ticket.status === "completed") gallery.add(ticket);
}

function follow(card) {
  if (isTerminal(card.ticket)) return finished(card);
  if (streams.work && streams.open < STREAM_SLOTS) return stream(card);
  return poller.watch(card);
}

// The stream ends at a terminal state, before the backup copy exists: poll for that.
function finished(card) {
  if (card.ticket.status === "completed" && card.ticket.backup === "pending") poller.watch(card);
}

function stream(card) {
  const id = card.ticket.id;
  const source = new EventSource(card.ticket.links?.events ?? `/tickets/${id}/events`);
  let heard = false;
  let open = true;
  streams.open += 1;
  const stop = () => {
    source.close(); // closed by hand: EventSource would otherwise reconnect forever
    if (open) streams.open -= 1;
    open = false;
  };
  source.addEventListener("ticket", (event) => {
    heard = true;
    render(card, JSON.parse(event.data));
    if (isTerminal(card.ticket)) {
      stop();
      finished(card);
    }
  });
  source.addEventListener("error", () => {
    stop();
    // never a single event: streams are blocked or buffered here, so poll from now on
    if (!heard) streams.work = false;
    poller.watch(card);
  });
}

// One ticket: GET /tickets/{id}. Many: GET /tickets?ids=..., never one poller per file.
function pollUrl(ids) {
  return ids.length === 1 ? `/tickets/${ids[0]}` : `/tickets?ids=${ids.join(",")}`;
}

class Poller {
  constructor() {
    this.cards = new Map(); // ticket id -> card
    this.etags = new Map(); // url -> ETag of the last 200
    this.timer = 0;
    this.idle = POLL_FLOOR_S;
  }

  watch(card) {
    this.cards.set(card.ticket.id, card);
    if (!this.timer) this.wake(POLL_FLOOR_S);
  }

  wake(seconds) {
    this.timer = setTimeout(() => this.poll(), seconds * 1000);
  }

  async poll() {
    const ids = [...this.cards.keys()];
    const urls = [];
    let retryAfter = 0;
    let changed = false;
    for (let start = 0; start < ids.length; start += BATCH) {
      const chunk = ids.slice(start, start + BATCH);
      urls.push(pollUrl(chunk));
      const answer = await this.fetch(chunk);
      retryAfter = Math.max(retryAfter, answer.retryAfter);
      if (answer.tickets) changed = this.apply(answer.tickets) || changed;
    }
    // a validator is only worth keeping for a set of ids that will be asked again
    for (const url of this.etags.keys()) if (!urls.includes(url)) this.etags.delete(url);
    // the server's Retry-After when it sends one; otherwise back off while nothing moves
    this.idle = changed ? POLL_FLOOR_S : Math.min(POLL_CAP_S, this.idle * 1.5);
    this.timer = 0;
    if (this.cards.size) this.wake(retryAfter || this.idle);
  }

  async fetch(ids) {
    const url = pollUrl(ids);
    const headers = { ...JSON_HEADERS };
    if (this.etags.has(url)) headers["If-None-Match"] = this.etags.get(url);
    let response;
    try {
      // no-store: the browser must not answer from its cache; a 304 should reach us
      response = await fetch(url, { headers, cache: "no-store" });
    } catch {
      return { tickets: null, retryAfter: 0 }; // offline for now: the next round retries
    }
    const retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
    if (response.status === 404 && ids.length === 1) return { tickets: { [ids[0]]: null }, retryAfter };
    if (response.status !== 200) return { tickets: null, retryAfter };
    this.etags.set(url, response.headers.get("ETag"));
    const body = await response.json();
    return { tickets: ids.length === 1 ? { [ids[0]]: body } : body.tickets, retryAfter };
  }

  apply(tickets) {
    let changed = false;
    for (const [id, ticket] of Object.entries(tickets)) {
      const card = this.cards.get(id);
      if (!card) continue;
      const before = card.ticket;
      if (ticket === null) {
        card.show("failed", "Unknown", "The server no longer knows this upload.");
      } else {
        render(card, ticket);
        changed ||= ticket.version !== before.version || ticket.backup !== before.backup;
      }
      if (ticket === null || this.settled(card)) this.cards.delete(id);
    }
    return changed;
  }

  settled(card) {
    const ticket = card.ticket;
    if (!isTerminal(ticket)) return false;
    if (ticket.status !== "completed" || ticket.backup !== "pending") return true;
    card.completedAt ??= Date.now();
    return Date.now() - card.completedAt > BACKUP_PATIENCE_S * 1000;
  }
}

const poller = new Poller();

// -- the gallery: recent photos, newest first, a page at a time ----------------------------

const gallery = {
  ids: new Set(),
  next: null,

  tile(photoId, urls) {
    const names = sizeNames(Object.keys(urls));
    const item = document.createElement("li");
    const link = document.createElement("a");
    const img = document.createElement("img");
    link.href = urls[names.large];
    img.src = urls[names.thumb];
    img.srcset = `${urls[names.thumb]} 1x, ${urls[names.thumb2x]} 2x`;
    img.alt = `Photo ${photoId.slice(0, 8)}`;
    img.loading = "lazy";
    img.decoding = "async";
    link.append(img);
    item.append(link);
    item.dataset.photo = photoId;
    this.ids.add(photoId);
    return item;
  },

  async load(older = false) {
    await config;
    const params = new URLSearchParams({ limit: GALLERY_PAGE });
    if (older) params.set("before", this.next);
    let page;
    try {
      const response = await fetchWithGrant(`/photos?${params}`, { headers: JSON_HEADERS });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      page = await response.json();
    } catch {
      $("#gallery-status").textContent = "Recent photos could not be loaded; reload to try again.";
      return;
    }
    const urls = (sizes) => Object.fromEntries(Object.entries(sizes).map(([n, s]) => [n, urlOf(s)]));
    const fresh = page.photos.filter((p) => !this.ids.has(p.id)).map((p) => this.tile(p.id, urls(p.sizes)));
    $("#gallery").append(...fresh);
    if (older && fresh.length) $("a", fresh[0]).focus(); // keyboard users land on what is new
    this.next = page.next;
    $("#gallery-more").hidden = page.next === null;
    this.status();
  },

  async add(ticket) {
    if (this.ids.has(ticket.photo_id) || !ticket.photo) return;
    this.ids.add(ticket.photo_id); // now: a second answer about it must not add it twice
    const sizes = await photoSizes(ticket);
    const urls = Object.fromEntries(Object.entries(sizes).map(([n, s]) => [n, s.url]));
    $("#gallery").prepend(this.tile(ticket.photo_id, urls));
    this.status();
  },

  status() {
    const count = this.ids.size;
    $("#gallery-status").textContent = count ? "" : "No photos yet: upload one above.";
    $("#gallery-status").hidden = count > 0;
  },
};

// -- choosing files: picker, folder picker, drag and drop anywhere on the page -------------

async function addFiles(files, { folder = false } = {}) {
  const limits = await config;
  let skipped = 0;
  for (const file of files) {
    const why = refusal(file, limits);
    // in a folder, hidden files and non-photos are skipped quietly (counted, not carded)
    if (folder && (file.name.startsWith(".") || why)) {
      skipped += 1;
      continue;
    }
    const card = new Card(file);
    $("#uploads").append(card.el);
    if (why) card.refuse(why);
    else uploads.add(card);
  }
  skippedFiles += skipped;
  updateSummary();
}

function readEntry(entry) {
  if (entry.isFile) return new Promise((resolve, reject) => entry.file((f) => resolve([f]), reject));
  const reader = entry.createReader();
  const batch = () => new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  // readEntries answers in batches until it answers with none
  const all = async (found) => {
    const entries = await batch();
    if (!entries.length) return found;
    const nested = await Promise.all(entries.map(readEntry));
    return all(found.concat(...nested));
  };
  return all([]);
}

async function dropped(transfer) {
  // entries must be taken now: the DataTransfer empties once the event returns
  const entries = [...transfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  const files = [...transfer.files];
  if (!entries.some((entry) => entry.isDirectory)) return addFiles(files);
  const nested = await Promise.all(entries.map(readEntry));
  return addFiles(nested.flat(), { folder: true });
}

function setUpDropping() {
  const zone = $("#drop-zone");
  let depth = 0; // dragenter/dragleave fire for every child crossed: count to know we left
  const carriesFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  window.addEventListener("dragenter", (e) => {
    if (!carriesFiles(e)) return;
    depth += 1;
    zone.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragging");
  });
  // anywhere on the page is a drop target, so a near miss never navigates away to the file
  window.addEventListener("dragover", (e) => carriesFiles(e) && e.preventDefault());
  window.addEventListener("drop", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    dropped(e.dataTransfer);
  });
}

function setUpPickers() {
  for (const [selector, folder] of [["#file-input", false], ["#folder-input", true]]) {
    const input = $(selector);
    input.addEventListener("change", () => {
      addFiles([...input.files], { folder });
      input.value = ""; // choosing the same file again still counts as a change
    });
  }
}

async function showLimits() {
  const limits = await config;
  if (!limits.formats.length) return;
  const accept = [...limits.media_types, ...limits.extensions].join(",");
  $("#file-input").accept = accept;
  $("#limits").textContent = `${listFormats(limits)}, up to ${formatBytes(limits.max_upload_bytes)} each.`;
}

setUpPickers();
setUpDropping();
showLimits();
showUnfinished();
gallery.load();
$("#gallery-more").addEventListener("click", () => gallery.load(true));
