// The DVAMN web page: upload a dance video (or keypoints), draw the pose the service used
// over the muted video, and play each suggested track from its best offset in sync.
// Plain JavaScript, no framework and no build step: the file is served as it is, so the
// page works offline. It calls only the service's public endpoints (relative URLs, so
// that a route prefix works): POST match, POST match/keypoints, GET tracks/{id}/audio.
"use strict";

const TOP_K = 20; // suggestions listed (a catalog with fewer lists all)
const MAX_SEGMENT_S = 60; // GET tracks/{id}/audio's longest segment
const DRIFT_S = 0.15; // audio further than this from the video's clock is re-aligned
const KEYPOINT_FILE = /\.(npz|json|pkl)$/i; // keypoints, not a video: nothing to play

const $ = (id) => document.getElementById(id);
const state = {
  matches: [],
  current: -1,
  pose: null,
  segment: null, // {track, start, videoStart, duration, url}
  clock: null, // keypoint queries have no video: a clock stands in for it
  drawnFrames: 0,
  drawing: false,
  token: "",
};
window.dvamnPage = state; // for people (and tests) poking at the page in a console

// ---- errors in plain words --------------------------------------------------------

const STATUS_WORDS = {
  401: "This service needs a bearer token: enter it below and try again.",
  404: "Not found on this service.",
  413: "The file is too large or too long for this service.",
  415: "The service cannot read this file as a video.",
  422: "The service could not use this file.",
  503: "The service could not finish this query in time, or is busy; try a shorter video.",
};

function serviceDetail(text) {
  try {
    const body = JSON.parse(text);
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  } catch (e) {
    /* not JSON: a proxy's page */
  }
  return text.slice(0, 300);
}

function showError(status, detail) {
  const words = STATUS_WORDS[status] || `The service answered ${status}.`;
  const box = $("error");
  box.textContent = detail ? `${words}\n${detail}` : words;
  box.hidden = false;
  $("status").textContent = "";
  $("progress").hidden = true;
  if (status === 401) $("token-box").hidden = false;
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

// ---- sending a query --------------------------------------------------------------

function send(url, body, contentType) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    if (contentType) xhr.setRequestHeader("Content-Type", contentType);
    const progress = $("progress");
    progress.hidden = false;
    progress.value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        progress.value = e.loaded / e.total;
        $("status").textContent = `uploading: ${Math.round((100 * e.loaded) / e.total)}%`;
      }
    };
    xhr.upload.onload = () => {
      progress.removeAttribute("value"); // indeterminate while the service works
      $("status").textContent = "finding the dancer and matching the music...";
    };
    xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
    xhr.onerror = () => resolve({ status: 0, text: "the service could not be reached" });
    xhr.send(body);
  });
}

async function query(file) {
  $("error").hidden = true;
  state.token = $("token").value.trim();
  const name = file.name.toLowerCase();
  let response;
  if (name.endsWith(".npz") || name.endsWith(".json")) {
    let body;
    try {
      body = name.endsWith(".npz") ? await npzQuery(file) : JSON.parse(await file.text());
    } catch (e) {
      showError(422, `${file.name}: ${e.message}`);
      return;
    }
    if (!body.top_k) body.top_k = TOP_K;
    response = await send("match/keypoints?include_pose=true", JSON.stringify(body), "application/json");
  } else {
    // A video, or an AIST++ keypoints2d .pkl: the service reads those itself, with its
    // restricted reader (a browser has no safe way to, and sends the file as it is).
    const form = new FormData();
    form.append("video", file, file.name);
    response = await send(`match?include_pose=true&top_k=${TOP_K}`, form);
  }
  if (response.status !== 200) {
    showError(response.status, serviceDetail(response.text));
    return;
  }
  $("progress").hidden = true;
  show(JSON.parse(response.text), file);
}

// ---- keypoint .npz files (numpy's zip of .npy members) ----------------------------
// Browsers have no npz reader and our files are small, so this reads the zip's local
// headers and inflates with the browser's own DecompressionStream; the service checks
// every value again.

async function npzQuery(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const view = new DataView(bytes.buffer);
  const members = {};
  let at = 0;
  while (at + 30 <= bytes.length && view.getUint32(at, true) === 0x04034b50) {
    const method = view.getUint16(at + 8, true);
    const size = view.getUint32(at + 18, true);
    const nameLength = view.getUint16(at + 26, true);
    const extra = view.getUint16(at + 28, true);
    const memberName = new TextDecoder().decode(bytes.subarray(at + 30, at + 30 + nameLength));
    const start = at + 30 + nameLength + extra;
    const data = bytes.subarray(start, start + size);
    if (method === 0) members[memberName] = data;
    else if (method === 8) members[memberName] = await inflate(data);
    else throw new Error(`zip member ${memberName} uses an unknown compression`);
    at = start + size;
  }
  const read = (key, required) => {
    const member = members[`${key}.npy`];
    if (!member) {
      if (required) throw new Error(`the .npz file has no '${key}' array`);
      return null;
    }
    return npy(member, key);
  };
  const keypoints = read("keypoints", true);
  const scores = read("scores", false);
  const fps = read("fps", true);
  const width = read("width", false);
  const height = read("height", false);
  const frames = keypoints.shape[0];
  if (keypoints.shape.length !== 3 || keypoints.shape[1] !== 17 || keypoints.shape[2] !== 2) {
    throw new Error(`keypoints must be [T][17][2], not [${keypoints.shape}]`);
  }
  const body = { keypoints: [], fps: fps.values[0] };
  for (let t = 0; t < frames; t++) {
    const frame = [];
    for (let j = 0; j < 17; j++) {
      const i = (t * 17 + j) * 2;
      frame.push([keypoints.values[i], keypoints.values[i + 1]]);
    }
    body.keypoints.push(frame);
  }
  if (scores) {
    body.scores = [];
    for (let t = 0; t < frames; t++) body.scores.push(Array.from(scores.values.subarray(t * 17, t * 17 + 17)));
  }
  if (width && height) Object.assign(body, { width: width.values[0], height: height.values[0] });
  return body;
}

async function inflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function npy(bytes, key) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !shape || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`'${key}' is not a plain numpy array`);
  }
  const dims = shape[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  const body = bytes.slice(headerStart + headerLength);
  const types = { "<f4": Float32Array, "<f8": Float64Array, "<i4": Int32Array, "<i8": BigInt64Array };
  const Type = types[descr[1]];
  if (!Type) throw new Error(`'${key}' has dtype ${descr[1]}; expected float32 or float64`);
  let values = new Type(body.buffer, 0, count);
  if (Type === BigInt64Array) values = Float64Array.from(values, Number);
  return { shape: dims, values };
}

// ---- the result: video, pose overlay, ranked tracks -------------------------------

function show(answer, file) {
  state.matches = answer.matches;
  state.pose = answer.pose || null;
  state.current = -1;
  state.segment = null;
  $("status").textContent = "";
  $("result").hidden = false;
  const video = $("video");
  const isVideo = !KEYPOINT_FILE.test(file.name);
  video.hidden = !isVideo;
  if (isVideo) {
    if (video.src) URL.revokeObjectURL(video.src);
    video.src = URL.createObjectURL(file);
    state.clock = null;
  } else {
    video.removeAttribute("src");
    const frames = state.pose ? state.pose.keypoints.length : 0;
    state.clock = { playing: false, base: 0, since: 0, duration: frames / (state.pose?.fps || 10) };
  }
  const q = answer.query || {};
  $("query-info").textContent =
    `${q.frames ?? "?"} pose frames; the dancer was lost in ${Math.round(100 * (q.missing_fraction || 0))}% ` +
    `of them. Model ${answer.model?.version ?? "?"}, catalog ${answer.catalog?.version ?? "?"} ` +
    `(${answer.catalog?.num_tracks ?? "?"} tracks).`;
  renderTracks();
  drawTimeline();
  if (!state.drawing) {
    state.drawing = true;
    requestAnimationFrame(drawLoop);
  }
}

function renderTracks() {
  const list = $("tracks");
  list.textContent = "";
  const scores = state.matches.map((m) => m.score);
  const best = Math.min(...scores);
  const worst = Math.max(...scores);
  state.matches.forEach((m, i) => {
    const li = document.createElement("li");
    li.dataset.trackId = m.track_id;
    li.tabIndex = 0;
    const similarity = worst > best ? (worst - m.score) / (worst - best) : 1;
    const title = m.title && m.title !== m.track_id ? `${m.title} (${m.track_id})` : m.track_id;
    li.innerHTML =
      `<span class="rank">${i + 1}</span><span class="title"></span>` +
      `<span class="offset"></span><span class="bar"><span></span></span>` +
      `<span class="score"></span>`;
    li.querySelector(".title").textContent = title;
    li.querySelector(".offset").textContent = `from ${formatTime(m.offset_s)}`;
    li.querySelector(".bar span").style.width = `${Math.round(8 + 92 * similarity)}%`;
    li.querySelector(".score").textContent =
      `score ${m.score.toFixed(4)} (distance at the best offset; lower fits better)`;
    li.querySelector(".score").dataset.score = String(m.score);
    li.querySelector(".offset").dataset.offset = String(m.offset_s);
    li.addEventListener("click", () => playTrack(i));
    list.appendChild(li);
  });
}

function formatTime(seconds) {
  const m = Math.floor(seconds / 60);
  return `${m}:${(seconds - 60 * m).toFixed(1).padStart(4, "0")}`;
}

// ---- the clock: the video's, or a stand-in for keypoint queries -------------------

function now() {
  if (!state.clock) return $("video").currentTime;
  const c = state.clock;
  const t = c.playing ? c.base + (performance.now() - c.since) / 1000 : c.base;
  if (t >= c.duration) {
    Object.assign(c, { playing: false, base: c.duration });
    $("audio").pause();
    return c.duration;
  }
  return t;
}

function playing() {
  return state.clock ? state.clock.playing : !$("video").paused;
}

function setPlaying(on) {
  if (state.clock) {
    state.clock.base = now();
    state.clock.since = performance.now();
    state.clock.playing = on;
    syncAudio();
  } else if (on) {
    $("video").play();
  } else {
    $("video").pause();
  }
}

// ---- playing a track in sync ------------------------------------------------------

function mediaDuration() {
  return state.clock ? state.clock.duration : $("video").duration || 0;
}

async function playTrack(i) {
  if (i < 0 || i >= state.matches.length) return;
  state.current = i;
  document.querySelectorAll("#tracks li").forEach((li, k) => li.classList.toggle("current", k === i));
  await loadSegment(now());
  setPlaying(true);
  syncAudio();
}

async function loadSegment(videoTime) {
  const match = state.matches[state.current];
  const video = $("video");
  if (!state.clock && video.readyState < 1) {
    // The segment's length is the video's: wait until the video knows it.
    await new Promise((resolve) => video.addEventListener("loadedmetadata", resolve, { once: true }));
  }
  const videoStart = Math.max(0, Math.floor(videoTime * 10) / 10);
  const duration = Math.min(MAX_SEGMENT_S, Math.max(1, mediaDuration() - videoStart));
  const start = match.offset_s + videoStart;
  const url =
    `tracks/${match.track_id.split("/").map(encodeURIComponent).join("/")}/audio` +
    `?start=${start.toFixed(2)}&duration=${duration.toFixed(2)}`;
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) {
    showError(response.status, serviceDetail(await response.text()));
    return;
  }
  $("error").hidden = true;
  const audio = $("audio");
  if (state.segment) URL.revokeObjectURL(state.segment.url);
  const blobUrl = URL.createObjectURL(await response.blob());
  state.segment = { track: match.track_id, start, videoStart, duration, url: blobUrl };
  audio.dataset.trackId = match.track_id;
  audio.dataset.requestedDuration = String(duration);
  audio.src = blobUrl;
  await new Promise((resolve) => audio.addEventListener("loadedmetadata", resolve, { once: true }));
}

function syncAudio() {
  const audio = $("audio");
  const seg = state.segment;
  if (!seg) return;
  const t = now() - seg.videoStart;
  if (t < 0 || t > seg.duration + 0.05) {
    if (playing() && t < mediaDuration()) loadSegment(now()).then(syncAudio);
    audio.pause();
    return;
  }
  if (Math.abs(audio.currentTime - t) > DRIFT_S) audio.currentTime = t;
  if (playing() && audio.paused) audio.play().catch(() => {});
  if (!playing() && !audio.paused) audio.pause();
}

const video = $("video");
for (const event of ["play", "pause", "seeked", "ratechange"]) {
  video.addEventListener(event, () => {
    $("audio").playbackRate = video.playbackRate;
    syncAudio();
  });
}
video.addEventListener("ended", () => $("audio").pause());

// ---- drawing the pose -------------------------------------------------------------

function contentBox(canvas, width, height) {
  // The video is letterboxed inside its element (object-fit: contain).
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  const scale = Math.min(w / width, h / height);
  return { scale, x: (w - width * scale) / 2, y: (h - height * scale) / 2 };
}

function drawLoop() {
  drawPose();
  if (state.segment && playing()) syncAudio();
  requestAnimationFrame(drawLoop);
}

function drawPose() {
  const canvas = $("overlay");
  const pose = state.pose;
  const ratio = window.devicePixelRatio || 1;
  const player = canvas.parentElement;
  if (state.clock) player.style.aspectRatio = pose ? `${pose.width} / ${pose.height}` : "16 / 9";
  if (canvas.width !== Math.round(canvas.clientWidth * ratio)) canvas.width = Math.round(canvas.clientWidth * ratio);
  if (canvas.height !== Math.round(canvas.clientHeight * ratio)) canvas.height = Math.round(canvas.clientHeight * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  if (!pose || !pose.keypoints.length) return;
  const frame = Math.min(pose.keypoints.length - 1, Math.max(0, Math.floor(now() * pose.fps + 1e-6)));
  const joints = pose.keypoints[frame];
  const lost = !pose.present[frame];
  const box = contentBox(canvas, pose.width, pose.height);
  const at = (j) => [box.x + joints[j][0] * box.scale, box.y + joints[j][1] * box.scale];
  const colour = lost ? "#d1242f" : "#2ecc71";
  ctx.lineWidth = 3;
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.setLineDash(lost ? [6, 5] : []);
  for (const [a, b] of pose.edges) {
    ctx.beginPath();
    ctx.moveTo(...at(a));
    ctx.lineTo(...at(b));
    ctx.stroke();
  }
  ctx.setLineDash([]);
  for (let j = 0; j < joints.length; j++) {
    ctx.beginPath();
    ctx.arc(...at(j), 3.5, 0, 2 * Math.PI);
    ctx.fill();
  }
  if (lost) {
    ctx.font = "600 15px system-ui, sans-serif";
    ctx.fillText("dancer lost: pose filled in", 10, 22);
  }
  state.drawnFrames += 1;
  canvas.dataset.drawnFrames = String(state.drawnFrames);
  canvas.dataset.poseFrame = String(frame);
}

function drawTimeline() {
  const canvas = $("timeline");
  const pose = state.pose;
  canvas.width = canvas.clientWidth || 600;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#2ecc71";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!pose) return;
  const n = pose.present.length;
  ctx.fillStyle = "#d1242f";
  pose.present.forEach((seen, i) => {
    if (!seen) ctx.fillRect((i / n) * canvas.width, 0, Math.max(1, canvas.width / n), canvas.height);
  });
  canvas.dataset.lostFrames = String(pose.present.filter((p) => !p).length);
}

// ---- input: drop, choose, keys ----------------------------------------------------

const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) query(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => {
  if (e.target.files.length) query(e.target.files[0]);
  e.target.value = "";
});

document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || !state.matches.length) return;
  if (e.key === "j" || e.key === "ArrowDown") {
    e.preventDefault();
    playTrack(Math.min(state.matches.length - 1, state.current + 1));
  } else if (e.key === "k" || e.key === "ArrowUp") {
    e.preventDefault();
    playTrack(Math.max(0, state.current - 1));
  } else if (e.key === " ") {
    e.preventDefault();
    if (state.current < 0) playTrack(0);
    else setPlaying(!playing());
  }
});
window.addEventListener("resize", drawTimeline);

fetch("healthz")
  .then((r) => r.json())
  .then((h) => {
    $("status").textContent = `ready: ${h.num_tracks} tracks in the catalog`;
  })
  .catch(() => {});
