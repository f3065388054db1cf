// edge-monitor web view: one server-sent event stream feeds the timelines, health and alarms.
"use strict";

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const MAX_POINTS = 3600;
const machines = new Map(); // name -> {el, points: [[t, score, threshold]], snap}
let alarms = [];
let status = null;
let drawPending = false;

function fmt(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function timeText(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { hour12: false });
}

function machine(name) {
  let m = machines.get(name);
  if (!m) {
    const node = document.getElementById("machine-template").content.firstElementChild.cloneNode(true);
    node.dataset.machine = name;
    node.querySelector(".name").textContent = name;
    document.getElementById("machines").appendChild(node);
    m = { el: node, points: [], snap: null };
    machines.set(name, m);
    const select = document.getElementById("enrol-machine");
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.appendChild(option);
  }
  return m;
}

function addPoints(byMachine) {
  for (const [name, points] of Object.entries(byMachine)) {
    const m = machine(name);
    m.points.push(...points);
    if (m.points.length > MAX_POINTS) m.points.splice(0, m.points.length - MAX_POINTS);
    m.el.dataset.points = String(m.points.length);
  }
  scheduleDraw();
}

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; machines.forEach(draw); });
}

function draw(m, name) {
  const canvas = m.el.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 56, bottom = 22, top = 8, right = 8;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const pts = m.points;
  if (pts.length === 0) {
    ctx.fillStyle = "#6b7280";
    ctx.fillText(m.snap && m.snap.status === "learning" ? "learning the machine's normal sound…" : "no scored window yet", left, h / 2);
    return;
  }
  const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1);
  let lo = Infinity, hi = -Infinity;
  for (const [, s, thr] of pts) {
    if (s > 0) { lo = Math.min(lo, s); hi = Math.max(hi, s); }
    lo = Math.min(lo, thr); hi = Math.max(hi, thr);
  }
  lo = Math.log10(lo * 0.8); hi = Math.log10(hi * 1.25);
  const x = (t) => left + (t - t0) / (t1 - t0) * (w - left - right);
  const y = (v) => top + (hi - Math.log10(Math.max(v, 1e-12))) / (hi - lo) * (h - top - bottom);
  // alarm spans of this machine
  ctx.fillStyle = "rgba(198, 40, 40, 0.12)";
  for (const a of alarms) {
    if (a.machine !== name || !a.started_at || a.earlier) continue;
    const a0 = Date.parse(a.started_at) / 1000, a1 = a.ended_at ? Date.parse(a.ended_at) / 1000 : t1;
    if (a1 < t0) continue;
    ctx.fillRect(x(Math.max(a0, t0)), top, Math.max(2, x(a1) - x(Math.max(a0, t0))), h - top - bottom);
  }
  // axes: decades on y, clock time on x
  ctx.strokeStyle = "#e2e4ea"; ctx.fillStyle = "#6b7280"; ctx.lineWidth = 1;
  for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) {
    ctx.beginPath(); ctx.moveTo(left, y(10 ** d)); ctx.lineTo(w - right, y(10 ** d)); ctx.stroke();
    ctx.fillText("1e" + d, 4, y(10 ** d) + 4);
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (t1 - t0) * i / 4;
    ctx.fillText(new Date(t * 1000).toLocaleTimeString(undefined, { hour12: false }), x(t) - (i === 4 ? 50 : i ? 25 : 0), h - 6);
  }
  // threshold
  ctx.strokeStyle = "#c62828"; ctx.setLineDash([6, 4]); ctx.beginPath();
  pts.forEach(([t, , thr], i) => (i ? ctx.lineTo(x(t), y(thr)) : ctx.moveTo(x(t), y(thr))));
  ctx.stroke(); ctx.setLineDash([]);
  // score
  ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 1.5; ctx.beginPath();
  pts.forEach(([t, s], i) => (i ? ctx.lineTo(x(t), y(s)) : ctx.moveTo(x(t), y(s))));
  ctx.stroke();
  ctx.fillStyle = "#1565c0"; ctx.fillText("score", w - 110, top + 12);
  ctx.fillStyle = "#c62828"; ctx.fillText("threshold", w - 70, top + 12);
}

function showStatus(body) {
  status = body;
  const snap = body.snapshot || {};
  const link = document.getElementById("link");
  if (body.broker === null) {
    link.textContent = "MQTT off"; link.className = "pill";
  } else {
    link.textContent = body.broker.connected ? "broker connected" : "broker unreachable";
    link.className = "pill " + (body.broker.connected ? "ok" : "bad");
  }
  const journal = body.broker ? body.broker.backlog : 0;
  document.getElementById("box").textContent =
    `journal ${journal} · dropped chunks ${snap.dropped_chunks ?? 0} · overflows ${snap.overflows ?? 0}` +
    ` · windows ${snap.windows ?? 0}` + (snap.source_fault ? ` · input: ${snap.source_fault}` : "");
  for (const [name, s] of Object.entries(snap.machines || {})) {
    const m = machine(name);
    m.snap = s;
    m.el.dataset.status = s.status;
    const pill = m.el.querySelector(".status");
    pill.textContent = s.status + (s.learning_progress !== null ? ` ${Math.round(100 * s.learning_progress)}%` : "");
    pill.className = "status pill " + s.status;
    m.el.querySelector(".ratio").textContent = s.ratio === null ? "" : `score ${fmt(s.score, 5)} · ×${fmt(s.ratio, 2)} of threshold`;
    m.el.querySelector(".reason").textContent = s.reason || "";
    const level = s.level_dbfs;
    m.el.querySelector(".meter-bar").style.width = level === null ? "0" : `${Math.max(0, Math.min(100, (level + 90) / 90 * 100))}%`;
    m.el.querySelector(".level").textContent = level === null ? "no audio" : `${fmt(level, 1)} dBFS`;
    const silence = m.el.querySelector(".silence");
    silence.textContent = s.silent_s > 0 ? `silent ${fmt(s.silent_s, 1)} s` : "";
    silence.className = "silence" + (s.silent_s > 0 ? " warn" : "");
    const clipping = m.el.querySelector(".clipping");
    clipping.textContent = s.clipped_windows > 0 ? `clipping ${s.clipped_windows} windows` : "";
    clipping.className = "clipping" + (s.clipped_windows > 0 ? " warn" : "");
    m.el.querySelector(".windows").textContent = `${s.scored_windows} windows scored, ${s.model_errors} model errors`;
    m.el.querySelector(".versions").textContent = s.bank_version ? `bank ${s.bank_version}` : "";
  }
  showEnrolment(body);
  scheduleDraw();
}

function showEnrolment(body) {
  const section = document.getElementById("enrolment");
  section.hidden = !body.commands_enabled || body.enrolment === null;
  if (section.hidden) return;
  const active = body.enrolment.active, last = body.enrolment.last;
  const bar = document.getElementById("enrol-bar"), text = document.getElementById("enrol-state");
  if (active) {
    bar.style.width = `${Math.round(100 * (active.progress || 0))}%`;
    text.textContent = `${active.machine}: ${active.state} (${Math.round(100 * (active.progress || 0))}%)`;
  } else {
    bar.style.width = "0";
    text.textContent = last ? `last: ${last.machine} ${last.state}${last.error ? " — " + last.error : ""}` : "no enrolment running";
  }
  section.dataset.state = active ? active.state : (last ? last.state : "none");
}

function showAlarms(list) {
  alarms = list;
  const body = document.querySelector("#alarms tbody");
  body.textContent = "";
  if (list.length === 0) {
    body.innerHTML = '<tr class="empty"><td colspan="7">no alarm yet</td></tr>';
    return;
  }
  const feedback = status && status.feedback;
  for (const a of list) {
    const row = document.createElement("tr");
    row.dataset.eventId = a.event_id;
    const cells = [timeText(a.started_at), a.machine, a.ratio !== undefined && a.ratio !== null ? `×${fmt(a.ratio, 2)}` : "",
      a.earlier ? "earlier run" : (a.ended_at ? `ended ${timeText(a.ended_at)}` : "open")];
    for (const text of cells) {
      const td = document.createElement("td"); td.textContent = text; row.appendChild(td);
    }
    const audioCell = document.createElement("td"), imgCell = document.createElement("td");
    if (a.clip) {
      const src = "/clips/" + encodeURIComponent(a.clip);
      const audio = document.createElement("audio");
      audio.controls = true; audio.preload = "metadata"; audio.src = src;
      audioCell.appendChild(audio);
      const img = document.createElement("img");
      img.src = src + "/spectrogram.png"; img.alt = "spectrogram of " + a.clip; img.loading = "lazy";
      imgCell.appendChild(img);
    }
    row.append(audioCell, imgCell);
    const actions = document.createElement("td");
    if (feedback && !a.earlier) {
      const button = document.createElement("button");
      button.textContent = "this alarm was normal";
      button.addEventListener("click", async () => {
        const notice = document.getElementById("notice");
        notice.textContent = "adding the alarm's windows to the bank…";
        const reply = await post(`/api/alarms/${encodeURIComponent(a.event_id)}/normal`, {}, "notice");
        if (reply.ok) {
          const r = reply.result;
          notice.textContent = `${a.machine}: alarm marked normal, ${r.windows} windows added; ` +
            `threshold ${fmt(r.threshold_old, 5)} → ${fmt(r.threshold_new, 5)}`;
        }
        notice.dataset.outcome = reply.ok ? "done" : "refused";
      });
      actions.appendChild(button);
    }
    row.appendChild(actions);
    body.appendChild(row);
  }
  scheduleDraw();
}

async function post(url, body, target = "enrol-state") {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken },
    body: JSON.stringify(body),
  });
  const reply = await response.json().catch(() => ({ error: response.statusText }));
  document.getElementById(target).textContent = response.ok ? "done" : `refused: ${reply.error}`;
  return reply;
}

document.querySelectorAll("#enrol-form button").forEach((button) => {
  button.addEventListener("click", () => {
    const machineName = document.getElementById("enrol-machine").value;
    const body = { machine: machineName };
    if (button.dataset.action === "start") body.seconds = Number(document.getElementById("enrol-seconds").value);
    post(`/api/enrol/${button.dataset.action}`, body);
  });
});

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("hello", (e) => {
    const d = JSON.parse(e.data);
    machines.forEach((m) => { m.points = []; });
    showStatus(d.status); addPoints(d.points); showAlarms(d.alarms);
    document.body.dataset.connected = "yes";
  });
  source.addEventListener("scores", (e) => addPoints(JSON.parse(e.data)));
  source.addEventListener("alarms", (e) => showAlarms(JSON.parse(e.data)));
  source.addEventListener("status", (e) => showStatus(JSON.parse(e.data)));
  source.onerror = () => {
    const link = document.getElementById("link");
    link.textContent = "daemon unreachable"; link.className = "pill bad";
    document.body.dataset.connected = "no";
  };
}

connect();
