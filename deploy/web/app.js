// dmue-serve's page: a photo in, every face boxed, labelled and explained. It uses only the
// public API (GET /v1/model, POST /v1/predict?return_crops=true), so it is also its example.
"use strict";

const BOX_COLOUR = "#00c8ff";
const SELECTED_COLOUR = "#ffd000";
const LANDMARK_COLOUR = "#ff3b6b";
// Photos are sent as they are when the server can decode them and they are no larger than
// this many times the detector's input side (the detector shrinks them to its side anyway;
// the margin keeps small faces sharp for alignment). Larger ones are downscaled here.
const UPLOAD_SIDE_FACTOR = 2;
const UPLOAD_SIDE_WITHOUT_DETECTOR = 1024;
const SERVER_FORMATS = ["image/png", "image/jpeg"];

const $ = (id) => document.getElementById(id);
const state = {
  model: null, // GET /v1/model
  bitmap: null, // the photo as shown (EXIF orientation applied)
  scale: 1, // sent pixels per shown pixel
  faces: [], // API faces, boxes in shown-photo pixels
  selected: -1,
  request: null, // AbortController of the request in flight
  stream: null, // camera MediaStream
};

// One plain sentence per way a request can fail; the API's own message goes below it.
const ERROR_SENTENCES = {
  400: "The server could not read this request.",
  413: "This photo is too large for the server. Try a smaller photo (fewer pixels or a smaller file).",
  415: "This file is not an image the server can read. Use a PNG or JPEG photo.",
  422: "This image could not be decoded: the file may be damaged or cut short.",
  429: "The server is busy with other photos right now. Try again in a moment.",
  500: "The server failed while classifying this photo.",
  503: "The server is not ready or is shutting down. Try again shortly.",
  504: "The server took too long with this photo. Try again, or use a smaller photo.",
  network: "Cannot reach the server. Check that dmue-serve is still running, then try again.",
};

function errorSentence(status) {
  if (status in ERROR_SENTENCES) return ERROR_SENTENCES[status];
  if (status >= 500) return ERROR_SENTENCES[500];
  return ERROR_SENTENCES[400];
}

function showError(sentence, detail = "", status = "") {
  $("error-sentence").textContent = sentence;
  $("error-detail").textContent = detail;
  $("error").dataset.status = String(status);
  $("error").hidden = false;
  setStatus("");
}

function clearError() {
  $("error").hidden = true;
  $("error-sentence").textContent = "";
  $("error-detail").textContent = "";
  delete $("error").dataset.status;
}

function setStatus(text) {
  $("status").textContent = text;
}

function percent(p) {
  return `${(100 * p).toFixed(1)} %`;
}

// ---- model panel ---------------------------------------------------------------------------

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/model");
  } catch (e) {
    showError(ERROR_SENTENCES.network, String(e), "network");
    fillModel([["Status", "unreachable"]]);
    return;
  }
  if (!response.ok) {
    showError(errorSentence(response.status), await errorDetail(response), response.status);
    return;
  }
  const m = await response.json();
  state.model = m;
  const card = m.card;
  const detector = m.detector
    ? `RetinaFace, photos scaled to ${m.detector.input_size} px, score ≥ ${m.detector.score_threshold.toFixed(2)}`
    : "off: every image is taken as one aligned face crop";
  fillModel([
    ["Classes", card.classes.join(", ")],
    ["Backbone", card.backbone],
    ["Input size", `${card.preprocess.crop} × ${card.preprocess.crop} px face crops`],
    ["Trained on", card.dataset + (m.synthetic ? " (synthetic benchmark)" : "")],
    ["Engine", m.engine],
    ["Precision", card.int8
      ? `int8 (activation ranges: ${card.int8.method}, ${card.int8.calibration_images} ${card.int8.calibration_split} crops)`
      : "float32"],
    ["Probabilities", card.temperature === 1
      ? "softmax of the model's scores (not calibrated)"
      : `calibrated: softmax of the scores / ${card.temperature.toFixed(2)} (temperature fitted on held-out data)`],
    ["Face detector", detector],
    ["Limits", `${(m.limits.max_body_bytes / 1048576).toFixed(0)} MiB per request, ${m.limits.max_side} px per side`],
    ["Version", `dmue ${card.version}, run ${card.run_id}`],
  ]);
  $("synthetic-warning").hidden = !m.synthetic;
}

function fillModel(rows) {
  const dl = $("model-info");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
}

async function errorDetail(response) {
  try {
    const body = await response.json();
    return body.error || "";
  } catch {
    return "";
  }
}

// ---- photo in ------------------------------------------------------------------------------

function uploadSide() {
  const d = state.model && state.model.detector;
  return d ? UPLOAD_SIDE_FACTOR * d.input_size : UPLOAD_SIDE_WITHOUT_DETECTOR;
}

// What to send for `file`: the bytes as they are when the server reads the format and the photo
// is small enough, else a JPEG re-encoding of the photo downscaled to uploadSide().
async function prepareUpload(file, bitmap) {
  if (!bitmap) return { blob: file, scale: 1 };
  const side = Math.max(bitmap.width, bitmap.height);
  const limit = uploadSide();
  if (side <= limit && SERVER_FORMATS.includes(file.type)) return { blob: file, scale: 1 };
  const scale = Math.min(1, limit / side);
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  return { blob, scale: canvas.width / bitmap.width };
}

async function handleFile(file, name) {
  if (!file) return;
  clearError();
  if (state.request) state.request.abort();
  const controller = new AbortController();
  state.request = controller;
  const label = name || file.name || "photo";
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    // Not decodable here: send it anyway, the server's answer says what is wrong with it.
  }
  showPhoto(bitmap, label);
  const { blob, scale } = await prepareUpload(file, bitmap);
  state.scale = scale;
  setStatus(`Finding faces in ${label}…`);
  let response;
  try {
    response = await fetch("/v1/predict?return_crops=true", {
      method: "POST",
      body: blob,
      headers: { "Content-Type": blob.type || "application/octet-stream" },
      signal: controller.signal,
    });
  } catch (e) {
    if (controller.signal.aborted) return;
    showError(ERROR_SENTENCES.network, String(e), "network");
    return;
  }
  if (controller.signal.aborted) return;
  if (!response.ok) {
    showError(errorSentence(response.status), await errorDetail(response), response.status);
    return;
  }
  let body;
  try {
    body = await response.json();
  } catch (e) {
    showError(ERROR_SENTENCES.network, `the answer was cut short: ${e}`, "network");
    return;
  }
  if (controller.signal.aborted) return;
  state.request = null;
  showResult(body.results[0], label);
}

function showPhoto(bitmap, label) {
  state.bitmap = bitmap;
  state.faces = [];
  state.selected = -1;
  renderCards();
  $("photo-figure").hidden = !bitmap;
  if (bitmap) {
    const canvas = $("photo-canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.setAttribute("aria-label", `${label}, waiting for the faces`);
    $("photo-caption").textContent = `${label} (${bitmap.width} × ${bitmap.height} px)`;
    draw();
  }
}

function showResult(result, label) {
  // Boxes and landmarks come back in the pixels that were sent: map them to the shown photo.
  const k = 1 / state.scale;
  state.faces = result.faces.map((f) => ({
    ...f,
    box: f.box.map((v) => v * k),
    landmarks: f.landmarks ? f.landmarks.map(([x, y]) => [x * k, y * k]) : null,
  }));
  state.selected = -1;
  const n = state.faces.length;
  const t = result.timing;
  const timing = `decode ${t.decode_ms.toFixed(0)} ms, detection ${t.detect_ms.toFixed(0)} ms, ` +
    `classification ${t.inference_ms.toFixed(0)} ms`;
  if (n === 0) {
    setStatus(`No face found in ${label}. That is a normal result, not an error: try a photo ` +
      `where a face is larger and turned towards the camera. (${timing})`);
  } else {
    setStatus(`${n} face${n === 1 ? "" : "s"} found in ${label} (${timing}).`);
  }
  const summary = state.faces.map((f, i) => `face ${i + 1}: ${f.label}`).join(", ");
  $("photo-canvas").setAttribute("aria-label",
    n === 0 ? `${label}: no face found` : `${label} with ${n} boxed face${n === 1 ? "" : "s"}: ${summary}`);
  renderCards();
  draw();
}

// ---- drawing -------------------------------------------------------------------------------

function draw() {
  const canvas = $("photo-canvas");
  const ctx = canvas.getContext("2d");
  if (!state.bitmap) return;
  ctx.drawImage(state.bitmap, 0, 0);
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 320));
  // The selected face last, so its box is on top.
  const order = state.faces.map((_, i) => i).filter((i) => i !== state.selected);
  if (state.selected >= 0) order.push(state.selected);
  for (const i of order) {
    const f = state.faces[i];
    const selected = i === state.selected;
    const [x0, y0, x1, y1] = f.box;
    ctx.lineWidth = selected ? 2 * line : line;
    ctx.strokeStyle = selected ? SELECTED_COLOUR : BOX_COLOUR;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    if (f.landmarks) {
      ctx.fillStyle = LANDMARK_COLOUR;
      for (const [x, y] of f.landmarks) {
        ctx.beginPath();
        ctx.arc(x, y, 1.5 * line, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    // The face's number, as on its card.
    const size = Math.max(12, 6 * line);
    ctx.font = `bold ${size}px sans-serif`;
    const tag = String(i + 1);
    const w = ctx.measureText(tag).width + size / 2;
    const ty = Math.max(0, y0 - size - line);
    ctx.fillStyle = selected ? SELECTED_COLOUR : BOX_COLOUR;
    ctx.fillRect(x0 - ctx.lineWidth / 2, ty, w, size + line);
    ctx.fillStyle = "#000";
    ctx.fillText(tag, x0 + size / 4 - ctx.lineWidth / 2, ty + size - line / 2);
  }
}

// ---- face cards ----------------------------------------------------------------------------

function renderCards() {
  const list = $("faces");
  list.replaceChildren();
  $("faces-empty").hidden = state.faces.length > 0;
  state.faces.forEach((f, i) => list.append(card(f, i)));
}

function card(f, i) {
  const li = document.createElement("li");
  li.className = "face-card";
  li.dataset.index = String(i);
  li.dataset.label = f.label;
  li.dataset.box = JSON.stringify(f.box);

  const button = document.createElement("button");
  button.type = "button";
  button.className = "face-select";
  button.setAttribute("aria-pressed", "false");
  button.textContent = `Face ${i + 1}: ${f.label}, ${percent(f.score)}`;
  button.addEventListener("click", (e) => {
    e.stopPropagation();
    select(i === state.selected ? -1 : i);
  });
  li.addEventListener("click", () => select(i));

  const body = document.createElement("div");
  body.className = "face-body";
  if (f.crop_png_base64) {
    const img = document.createElement("img");
    img.className = "crop";
    img.src = `data:image/png;base64,${f.crop_png_base64}`;
    img.alt = `Face ${i + 1} aligned and cropped, as the classifier saw it`;
    body.append(img);
  }
  const facts = document.createElement("dl");
  facts.className = "facts";
  const fact = (k, v) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    facts.append(dt, dd);
  };
  fact("Ambiguity", `${f.ambiguity.toFixed(2)} (0 sure, 1 undecided)`);
  if (f.detection_score != null) fact("Detection score", f.detection_score.toFixed(3));
  fact("Box", f.box.map((v) => v.toFixed(0)).join(", "));
  body.append(facts);

  const bars = document.createElement("ul");
  bars.className = "bars";
  bars.setAttribute("aria-label", `Probabilities of face ${i + 1}, most likely first`);
  const sorted = Object.entries(f.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of sorted) {
    const row = document.createElement("li");
    row.className = name === f.label ? "bar-row top" : "bar-row";
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(p);
    row.append(label, track, value);
    bars.append(row);
  }
  li.append(button, body, bars);
  return li;
}

function select(i) {
  state.selected = i;
  for (const li of $("faces").children) {
    const on = Number(li.dataset.index) === i;
    li.classList.toggle("selected", on);
    li.querySelector(".face-select").setAttribute("aria-pressed", String(on));
  }
  draw();
}

// The smallest box under the click, so a face inside another's box can still be picked.
function faceAt(x, y) {
  let best = -1;
  let bestArea = Infinity;
  state.faces.forEach((f, i) => {
    const [x0, y0, x1, y1] = f.box;
    const area = (x1 - x0) * (y1 - y0);
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && area < bestArea) {
      best = i;
      bestArea = area;
    }
  });
  return best;
}

function onCanvasClick(e) {
  const canvas = $("photo-canvas");
  const r = canvas.getBoundingClientRect();
  const x = ((e.clientX - r.left) * canvas.width) / r.width;
  const y = ((e.clientY - r.top) * canvas.height) / r.height;
  const i = faceAt(x, y);
  select(i);
  if (i >= 0) {
    const li = $("faces").children[i];
    li.scrollIntoView({ block: "nearest", behavior: "smooth" });
    li.querySelector(".face-select").focus({ preventScroll: true });
  }
}

// ---- camera --------------------------------------------------------------------------------

async function openCamera() {
  clearError();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    cameraUnavailable("this page is not on https or localhost, where browsers allow cameras");
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    cameraUnavailable(e.name === "NotAllowedError" ? "permission was refused" : e.message || e.name);
    return;
  }
  $("camera-video").srcObject = state.stream;
  $("camera").hidden = false;
  $("snapshot-button").focus();
}

function cameraUnavailable(why) {
  showError("The camera is not available, so choose a photo file instead.", `(${why})`, "camera");
  $("file-input").focus();
}

function closeCamera() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("camera-video").srcObject = null;
  $("camera").hidden = true;
}

async function snapshot() {
  const video = $("camera-video");
  if (!video.videoWidth) {
    showError("The camera has not sent a picture yet. Wait a moment and try again.", "", "camera");
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  closeCamera();
  $("camera-button").focus();
  await handleFile(new File([blob], "camera.jpg", { type: "image/jpeg" }), "the camera photo");
}

// ---- wiring --------------------------------------------------------------------------------

function imageFromTransfer(items) {
  for (const item of items || []) {
    if (item.kind === "file") {
      const f = item.getAsFile();
      if (f) return f;
    }
  }
  return null;
}

function init() {
  $("file-input").addEventListener("change", (e) => {
    handleFile(e.target.files[0]);
    e.target.value = "";
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    handleFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const f = imageFromTransfer(e.clipboardData && e.clipboardData.items);
    if (f) handleFile(f, "the pasted image");
  });
  $("camera-button").addEventListener("click", openCamera);
  $("camera-close").addEventListener("click", closeCamera);
  $("snapshot-button").addEventListener("click", snapshot);
  $("photo-canvas").addEventListener("click", onCanvasClick);
  loadModel();
}

init();
