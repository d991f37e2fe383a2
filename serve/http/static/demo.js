// Emotion demo: a picked image goes to POST /v1/analyze; the webcam streams JPEG frames over WS /v1/stream.
// At most MAX_IN_FLIGHT frames are unanswered at a time, so a slow service lowers the frame rate, not freshness.
"use strict";
const MAX_IN_FLIGHT = 2;
const $ = (id) => document.getElementById(id);
const overlay = $("overlay");
const status = (text) => { $("status").textContent = text; };
let socket = null, stream = null, inFlight = 0, sent = 0, answered = 0, started = 0;

function drawFaces(faces, srcWidth, srcHeight, shown) {
  overlay.width = shown.clientWidth;
  overlay.height = shown.clientHeight;
  const sx = overlay.width / srcWidth, sy = overlay.height / srcHeight;
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  ctx.lineWidth = 2;
  ctx.font = "14px sans-serif";
  const list = $("faces");
  list.replaceChildren();
  for (const face of faces) {
    const [x, y, w, h] = face.box;
    // An unreadable face has no label (null): say why, in grey, instead of an emotion.
    const readable = face.readable !== false && face.label !== null;
    const label = readable ? (face.smoothed_label || face.label) : "unreadable";
    const text = (readable ? `${label} ${(face.probabilities[face.label] * 100).toFixed(0)}%`
      : `unreadable (${face.unreadable_reason})`) + (face.track_id ? ` #${face.track_id}` : "");
    const colour = readable ? "#3f3" : "#999";
    ctx.strokeStyle = colour;
    ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
    ctx.fillStyle = colour;
    ctx.fillRect(x * sx, Math.max(0, y * sy - 18), ctx.measureText(text).width + 8, 18);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x * sx + 4, Math.max(14, y * sy - 4));
    const item = document.createElement("div");
    item.className = "face-label";
    item.dataset.label = label;
    item.textContent = `${text} box=${face.box.map(Math.round).join(",")} score=${face.score.toFixed(2)}`;
    list.appendChild(item);
  }
}

async function analyzeFile(file) {
  stop();
  const img = $("still");
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("video").hidden = true;
  await img.decode();
  status("analysing ...");
  const resp = await fetch("/v1/analyze", { method: "POST", body: file, headers: { "content-type": file.type } });
  const body = await resp.json();
  if (!resp.ok) { status(`error: ${body.error.code}: ${body.error.message}`); return; }
  drawFaces(body.faces, body.width, body.height, img);
  status(`${body.faces.length} face(s)`);
}

function sendFrame(video, canvas) {
  if (!socket || socket.readyState !== WebSocket.OPEN || inFlight >= MAX_IN_FLIGHT || !video.videoWidth) return;
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  inFlight += 1;
  canvas.toBlob((blob) => {
    if (socket && socket.readyState === WebSocket.OPEN) { socket.send(blob); sent += 1; } else { inFlight -= 1; }
  }, "image/jpeg", 0.8);
}

async function start() {
  stop();
  const video = $("video");
  stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  video.srcObject = stream;
  video.hidden = false;
  $("still").hidden = true;
  await video.play();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/v1/stream`);
  socket.binaryType = "arraybuffer";
  const canvas = document.createElement("canvas");
  started = performance.now();
  socket.onopen = () => { status("streaming ..."); sendFrame(video, canvas); };
  socket.onmessage = (event) => {
    const reply = JSON.parse(event.data);
    inFlight = Math.max(0, inFlight - 1);
    answered += 1;
    if (reply.faces) drawFaces(reply.faces, reply.width, reply.height, video);
    const fps = answered / ((performance.now() - started) / 1000);
    const what = reply.error ? `error ${reply.error.code}` : reply.dropped ? "dropped" :
      `${reply.faces.length} face(s), ${reply.latency_ms} ms`;
    status(`frame ${reply.index}: ${what} | ${fps.toFixed(1)} fps`);
    sendFrame(video, canvas);
  };
  socket.onclose = () => status(`stream closed after ${answered} replies`);
  const timer = setInterval(() => (socket ? sendFrame(video, canvas) : clearInterval(timer)), 100);
  $("stop").disabled = false;
}

function stop() {
  if (socket) { socket.close(); socket = null; }
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
  inFlight = 0; sent = 0; answered = 0;
  $("stop").disabled = true;
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) analyzeFile(e.target.files[0]); });
$("start").addEventListener("click", () => start().catch((err) => status(`camera error: ${err}`)));
$("stop").addEventListener("click", stop);
if (new URLSearchParams(location.search).has("autostart")) {
  start().catch((err) => status(`camera error: ${err}`));
}
