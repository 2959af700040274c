// Floodgate dashboard: plain JavaScript, no build step, no CDN (it must work offline).
"use strict";

const I18N = {
  zh: {
    title: "有呼必应 · 积水预警", nav_overview: "总览", nav_tickets: "工单", nav_measures: "考核指标", logout: "退出",
    login: "登录", username: "用户名", password: "密码", login_failed: "用户名或密码错误",
    map: "站点地图", alerts: "当前告警", tickets: "工单队列", site: "站点", level: "等级", gate: "道闸", board: "情报板",
    online: "在线", offline: "离线", none: "无", state: "状态", priority: "优先级", unit: "责任单位", kind: "类型",
    created: "创建时间", timeline: "处置时间线", note: "说明", score: "评分", of_ticket: "合并到工单",
    dispatch: "派遣", accept: "签收", reject: "退回", report: "处置反馈", verify: "核查", evaluate: "评价结案",
    reopen: "重新打开", merge: "合并", comment: "备注", commands: "远程控制", show_message: "发布情报板信息",
    close_gate: "关闭道闸", open_gate: "开启道闸", confirm_cmd: "确认发送命令？", result: "结果",
    depth: "水深 (mm)", history: "水深曲线", devices: "设备", measures_units: "单位月度考核", measures_sites: "站点汛期统计",
    month: "月份", season: "汛期", on_time_accept: "按时签收率", on_time_handle: "按时处置率", avg_h: "平均处置(小时)",
    p90_h: "P90 处置(小时)", satisfaction: "满意率", escalations: "督办次数", peak: "最高水深", hours_above: "超阈值时长(小时)",
    all: "全部", overdue: "超时", clear: "正常", warning: "预警", danger: "危险", back: "返回",
    zoom_hint: "在曲线上拖动可放大", zoom_reset: "还原", on_time_by_unit: "各单位按时签收率", escalations_by_unit: "各单位督办次数", peak_by_site: "各站点最高水深 (mm)",
    alerts_by_site: "各站点告警次数",
  },
  en: {
    title: "Floodgate · flood warnings", nav_overview: "Overview", nav_tickets: "Tickets", nav_measures: "Measures", logout: "Log out",
    login: "Log in", username: "User name", password: "Password", login_failed: "Wrong user name or password",
    map: "Sites", alerts: "Active alerts", tickets: "Ticket queue", site: "Site", level: "Level", gate: "Gate", board: "Board",
    online: "online", offline: "offline", none: "none", state: "State", priority: "Priority", unit: "Unit", kind: "Kind",
    created: "Created", timeline: "Timeline", note: "Note", score: "Score", of_ticket: "Merge into ticket",
    dispatch: "Dispatch", accept: "Accept", reject: "Reject", report: "Report handling", verify: "Verify", evaluate: "Evaluate and close",
    reopen: "Reopen", merge: "Merge", comment: "Comment", commands: "Commands", show_message: "Show on board",
    close_gate: "Close gate", open_gate: "Open gate", confirm_cmd: "Send this command?", result: "Result",
    depth: "Depth (mm)", history: "Water depth", devices: "Devices", measures_units: "Units by month", measures_sites: "Sites by season",
    month: "Month", season: "Season", on_time_accept: "On-time accept", on_time_handle: "On-time handling", avg_h: "Avg handling (h)",
    p90_h: "P90 handling (h)", satisfaction: "Satisfaction", escalations: "Escalations", peak: "Peak depth", hours_above: "Hours above threshold",
    all: "All", overdue: "Overdue", clear: "clear", warning: "warning", danger: "danger", back: "Back",
    zoom_hint: "Drag across the chart to zoom in", zoom_reset: "Reset zoom", on_time_by_unit: "On-time acceptance by unit",
    escalations_by_unit: "Escalations by unit",
    peak_by_site: "Peak depth by site (mm)", alerts_by_site: "Alerts by site",
  },
};
// The vocabulary (states, kinds, actions) comes from the collector: GET /api/v1/vocab.
// Which actions a user may take on a ticket comes with the ticket (allowed_actions).
let vocab = null;
const COMMAND_ROLES = ["operator", "dispatcher", "admin"];

let lang = localStorage.getItem("lang") || "zh";
let me = null;
let outline = null;
let uiConfig = {};
let source = null;
let refreshTimer = null;
const commandNotes = {};  // the last command's result per site: survives a live redraw
const $main = () => document.getElementById("main");
const t = (k) => (I18N[lang][k] ?? k);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const when = (ms) => (ms ? new Date(ms).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB") : "");
const token = () => sessionStorage.getItem("token");

async function api(path, opts = {}) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401 && !path.endsWith("/auth/login")) { logout(); throw new Error("401"); }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

function translate() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.getElementById("lang").textContent = lang === "zh" ? "EN" : "中文";
}

function logout() {
  sessionStorage.removeItem("token");
  me = null;
  if (source) { source.close(); source = null; }
  location.hash = "#/login";
}

function liveUpdates() {
  if (source || !token()) return;
  source = new EventSource(`/api/v1/stream?token=${encodeURIComponent(token())}`);
  const dot = document.getElementById("live");
  source.onopen = () => dot.classList.add("on");
  source.onerror = () => dot.classList.remove("on");
  for (const kind of ["alert", "state", "event", "ticket", "resync"]) {
    source.addEventListener(kind, () => {
      const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement?.tagName);
      if (typing) return;  // never wipe what someone is writing
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(route, 150);  // several events in a burst: one redraw
    });
  }
}

// ---------------------------------------------------------------- login

function renderLogin() {
  $main().innerHTML = `
    <form class="card login" id="login-form">
      <h2>${t("login")}</h2>
      <input name="username" placeholder="${t("username")}" autocomplete="username" required>
      <input name="password" type="password" placeholder="${t("password")}" autocomplete="current-password" required>
      <p class="error" id="login-error"></p>
      <button class="primary" type="submit">${t("login")}</button>
    </form>`;
  document.getElementById("login-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      const r = await api("/api/v1/auth/login", { method: "POST", body: JSON.stringify({ username: f.get("username"), password: f.get("password") }) });
      sessionStorage.setItem("token", r.token);
      location.hash = "#/";
    } catch (e) {
      document.getElementById("login-error").textContent = t("login_failed");
    }
  };
}

// ------------------------------------------------------------- overview

function project(lat, lon, box, w, h) {
  const x = ((lon - box.minLon) / (box.maxLon - box.minLon)) * (w - 40) + 20;
  const y = ((box.maxLat - lat) / (box.maxLat - box.minLat)) * (h - 40) + 20;
  return [x, y];
}

function mapSvg(sites) {
  const w = 800, h = 520;
  const ring = outline.features[0].geometry.coordinates[0];
  const box = { minLon: Infinity, maxLon: -Infinity, minLat: Infinity, maxLat: -Infinity };
  for (const [lon, lat] of ring) {
    box.minLon = Math.min(box.minLon, lon); box.maxLon = Math.max(box.maxLon, lon);
    box.minLat = Math.min(box.minLat, lat); box.maxLat = Math.max(box.maxLat, lat);
  }
  const pts = ring.map(([lon, lat]) => project(lat, lon, box, w, h).join(",")).join(" ");
  const tiles = uiConfig.map_tiles ? tileImages(uiConfig.map_tiles, box, w, h) : "";
  const dots = sites.filter((s) => s.lat != null).map((s) => {
    const [x, y] = project(s.lat, s.lon, box, w, h);
    const cls = s.online ? s.level : "offline";
    const gate = s.gate === "closed" ? " ⛔" : "";
    return `<g data-testid="site-${esc(s.node)}" data-level="${esc(s.level)}" data-gate="${esc(s.gate ?? "")}" data-online="${s.online}">
      <circle class="site ${cls}" cx="${x}" cy="${y}" r="${s.level === "clear" ? 7 : 10}" onclick="location.hash='#/site/${esc(s.node)}'"><title>${esc(s.name)}</title></circle>
      <text x="${x + 12}" y="${y + 4}">${esc(s.name.split(" ")[0])}${gate}</text></g>`;
  }).join("");
  return `<svg class="map" viewBox="0 0 ${w} ${h}" role="img" aria-label="${t("map")}">
    ${tiles}<polygon class="outline ${tiles ? "over-tiles" : ""}" points="${pts}"></polygon>${dots}</svg>`;
}

// Web-Mercator tiles laid under the outline. At a district's size the map's simple
// lat/lon projection and Mercator differ by well under a pixel per tile.
function tileImages(template, box, w, h) {
  const z = 12, n = 2 ** z;
  const tx = (lon) => Math.floor(((lon + 180) / 360) * n);
  const ty = (lat) => Math.floor(((1 - Math.log(Math.tan((lat * Math.PI) / 180) + 1 / Math.cos((lat * Math.PI) / 180)) / Math.PI) / 2) * n);
  const lonOf = (x) => (x / n) * 360 - 180;
  const latOf = (y) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI;
  const out = [];
  for (let x = tx(box.minLon); x <= tx(box.maxLon); x++) {
    for (let y = ty(box.maxLat); y <= ty(box.minLat); y++) {
      const [x0, y0] = project(latOf(y), lonOf(x), box, w, h);
      const [x1, y1] = project(latOf(y + 1), lonOf(x + 1), box, w, h);
      const href = template.replace("{z}", z).replace("{x}", x).replace("{y}", y);
      out.push(`<image class="tile" href="${esc(href)}" x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" preserveAspectRatio="none"></image>`);
    }
  }
  return out.join("");
}

function ticketRows(items) {
  return items.map((k) => `<tr class="clickable" data-testid="ticket-row" data-node="${esc(k.node)}" onclick="location.hash='#/ticket/${k.id}'">
    <td><span class="badge ${k.priority === "fault" ? "fault" : esc(k.priority)}">${t(k.priority)}</span></td>
    <td>${esc(k.title)}</td><td>${esc(t(k.state))}${k.overdue ? ` <span class="badge danger">${t("overdue")}</span>` : ""}</td>
    <td>${esc(k.unit)}</td><td class="muted">${when(k.created_ms)}</td></tr>`).join("");
}

async function renderOverview() {
  const [sites, alerts, tickets] = await Promise.all([
    api("/api/v1/sites"),
    api("/api/v1/alerts?active=true&limit=100"),
    api(`/api/v1/tickets?${vocab.active_states.map((s) => `state=${s}`).join("&")}&limit=100`),
  ]);
  const names = Object.fromEntries(sites.map((s) => [s.node, s.name]));
  $main().innerHTML = `<div class="grid">
    <section class="card"><h2>${t("map")}</h2>${mapSvg(sites)}
      <table><tr><th>${t("site")}</th><th>${t("level")}</th><th>${t("gate")}</th><th>${t("board")}</th></tr>
      ${sites.map((s) => `<tr class="clickable" onclick="location.hash='#/site/${esc(s.node)}'"><td>${esc(s.name)}</td>
        <td>${s.online ? `<span class="badge ${esc(s.level)}">${t(s.level)}</span>` : `<span class="badge">${t("offline")}</span>`}</td>
        <td>${esc(s.gate ?? "")}</td><td>${esc(s.sign ?? "")}</td></tr>`).join("")}</table></section>
    <div>
      <section class="card"><h2>${t("alerts")} (${alerts.total})</h2><table>
        ${alerts.items.map((a) => `<tr data-testid="alert-row"><td><span class="badge ${vocab.alert_kinds[a.kind]?.water ? esc(a.level) : "fault"}">${t(a.level)}</span></td>
          <td>${esc(names[a.node] ?? a.node)}</td><td>${esc(a.dev)} ${esc(a.kind)}</td><td class="muted">${when(a.last_ts)}</td></tr>`).join("")}</table></section>
      <section class="card" style="margin-top:16px"><h2>${t("tickets")} (${tickets.total})</h2><table>${ticketRows(tickets.items)}</table></section>
    </div></div>`;
}

async function renderTickets() {
  const state = new URLSearchParams(location.hash.split("?")[1] || "").get("state") || "";
  const q = state ? `state=${state}` : "";
  const tickets = await api(`/api/v1/tickets?${q}&limit=200`);
  const states = ["", ...vocab.states];
  $main().innerHTML = `<section class="card"><h2>${t("tickets")} (${tickets.total})</h2>
    <div class="form-row"><label>${t("state")}</label><select id="state-filter">${states.map((s) => `<option value="${s}" ${s === state ? "selected" : ""}>${s ? t(s) : t("all")}</option>`).join("")}</select></div>
    <table><tr><th>${t("priority")}</th><th></th><th>${t("state")}</th><th>${t("unit")}</th><th>${t("created")}</th></tr>${ticketRows(tickets.items)}</table></section>`;
  document.getElementById("state-filter").onchange = (ev) => { location.hash = `#/tickets?state=${ev.target.value}`; };
}

// --------------------------------------------------------------- ticket

async function renderTicket(id) {
  const k = await api(`/api/v1/tickets/${id}`);
  const actions = k.allowed_actions;
  $main().innerHTML = `<section class="card" data-testid="ticket" data-state="${esc(k.state)}">
    <p><a href="#/">← ${t("back")}</a></p>
    <h2>${esc(k.title)} <span class="badge ${k.priority === "fault" ? "fault" : esc(k.priority)}">${t(k.priority)}</span></h2>
    <p>${t("state")}: <b data-testid="ticket-state">${esc(t(k.state))}</b> · ${t("unit")}: ${esc(k.unit)} · ${t("kind")}: ${esc(k.kind)}
      ${k.overdue ? `<span class="badge danger">${t("overdue")}</span>` : ""} · <a href="#/site/${esc(k.node)}">${esc(k.node)}</a></p>
    ${actions.length ? `<div class="card"><div class="form-row"><textarea id="note" placeholder="${t("note")}"></textarea></div>
      <div class="form-row"><label>${t("score")}</label><select id="score"><option></option>${[5, 4, 3, 2, 1].map((n) => `<option>${n}</option>`).join("")}</select>
      <label>${t("of_ticket")}</label><input id="of" size="28"></div>
      <div class="actions" data-testid="actions">${actions.map((a) => `<button type="button" data-action="${a}" class="${a === "dispatch" || a === "accept" ? "primary" : ""}">${t(a)}</button>`).join("")}</div>
      <p class="error" id="action-error"></p></div>` : ""}
    <h2>${t("timeline")}</h2><ul class="timeline">${k.timeline.map((e) => `<li><span class="ts">${when(e.ts)}</span>
      <b>${esc(t(e.action))}</b> · ${esc(e.actor)} ${e.to_state ? `→ ${esc(t(e.to_state))}` : ""} <span class="muted">${esc(e.note ?? "")}</span></li>`).join("")}</ul>
  </section>`;
  document.querySelectorAll("[data-action]").forEach((b) => {
    b.onclick = async () => {
      const body = {};
      const note = document.getElementById("note").value.trim();
      const score = document.getElementById("score").value;
      const of = document.getElementById("of").value.trim();
      if (note) body.note = note;
      if (score) body.score = Number(score);
      if (of) body.of = of;
      try {
        await api(`/api/v1/tickets/${id}/${b.dataset.action}`, { method: "POST", body: JSON.stringify(body) });
        renderTicket(id);
      } catch (e) {
        document.getElementById("action-error").textContent = e.message;
      }
    };
  });
}

// ----------------------------------------------------------------- site

const CHART = { w: 760, h: 250, pad: 36 };

function clockLabel(ms, span) {
  const d = new Date(ms), two = (n) => String(n).padStart(2, "0");
  const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
  return span > 86400e3 ? `${two(d.getMonth() + 1)}-${two(d.getDate())} ${hm}` : hm;
}

// The depth over [from, to] with the thresholds drawn; drag across it to zoom in.
function chartSvg(points, thresholds, from, to) {
  const { w, h, pad } = CHART;
  const ys = points.map((p) => p.avg ?? p.value);
  const th = [thresholds?.warning, thresholds?.danger].filter((v) => v != null);
  const maxY = Math.max(...ys, ...th, 10) * 1.1, minY = Math.min(0, ...ys);
  const X = (v) => pad + ((v - from) / (to - from)) * (w - 2 * pad);
  const Y = (v) => h - pad + 10 - ((v - minY) / (maxY - minY)) * (h - 2 * pad);
  const path = points.map((p, i) => `${i ? "L" : "M"}${X(p.ts).toFixed(1)},${Y(p.avg ?? p.value).toFixed(1)}`).join(" ");
  const lines = ["warning", "danger"].filter((k) => thresholds?.[k] != null).map((k) =>
    `<line class="threshold ${k}" x1="${pad}" x2="${w - pad}" y1="${Y(thresholds[k])}" y2="${Y(thresholds[k])}"></line>
     <text x="${w - pad - 60}" y="${Y(thresholds[k]) - 4}">${t(k)} ${thresholds[k]}</text>`).join("");
  const yTicks = [0, 0.25, 0.5, 0.75, 1].map((f) => { const v = minY + f * (maxY - minY); return `<line class="grid-line" x1="${pad}" x2="${w - pad}" y1="${Y(v)}" y2="${Y(v)}"></line><text x="2" y="${Y(v) + 4}">${v.toFixed(0)}</text>`; }).join("");
  const xTicks = [0, 0.25, 0.5, 0.75, 1].map((f) => { const v = from + f * (to - from); return `<text class="x-tick" x="${X(v)}" y="${h - 4}" text-anchor="middle">${clockLabel(v, to - from)}</text>`; }).join("");
  const empty = points.length ? "" : `<text x="${w / 2}" y="${h / 2}" text-anchor="middle" class="muted">${t("none")}</text>`;
  return `<svg class="chart" viewBox="0 0 ${w} ${h}" data-testid="chart" data-from="${from}" data-to="${to}" data-points="${points.length}">
    ${yTicks}${xTicks}${lines}<path class="series" d="${path}"></path>${empty}
    <rect class="zoom-sel" x="0" y="${pad - 26}" width="0" height="${h - 2 * pad + 16}" hidden></rect></svg>`;
}

// Drag across the chart (mouse, pen or finger) to look at that stretch of time.
function zoomable(svg, onZoom) {
  const { w, pad } = CHART, sel = svg.querySelector(".zoom-sel");
  const from = Number(svg.dataset.from), to = Number(svg.dataset.to);
  const toX = (ev) => { const r = svg.getBoundingClientRect(); return Math.max(pad, Math.min(w - pad, ((ev.clientX - r.left) / r.width) * w)); };
  const toTime = (x) => Math.round(from + ((x - pad) / (w - 2 * pad)) * (to - from));
  let start = null;
  const draw = (x) => { const a = Math.min(start, x), b = Math.max(start, x); sel.setAttribute("x", a); sel.setAttribute("width", b - a); };
  svg.addEventListener("pointerdown", (ev) => { start = toX(ev); svg.setPointerCapture(ev.pointerId); sel.hidden = false; draw(start); ev.preventDefault(); });
  svg.addEventListener("pointermove", (ev) => { if (start !== null) draw(toX(ev)); });
  svg.addEventListener("pointerup", (ev) => {
    if (start === null) return;
    const x = toX(ev), a = Math.min(start, x), b = Math.max(start, x);
    start = null; sel.hidden = true;
    if (b - a >= 6 && toTime(b) - toTime(a) >= 60e3) onZoom(toTime(a), toTime(b));  // a click is not a zoom
  });
}

async function renderSite(node) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const range = Number(params.get("h") || 1);
  const zoomed = params.has("from") && params.has("to");
  const to = zoomed ? Number(params.get("to")) : Date.now();
  const from = zoomed ? Number(params.get("from")) : to - range * 3600e3;
  const span = to - from;
  const [[site], info] = await Promise.all([
    api("/api/v1/sites").then((all) => all.filter((s) => s.node === node)),
    api(`/api/v1/nodes/${node}`),
  ]);
  const level = info.devices.find((d) => d.kind === "level");
  const res = span <= 2 * 3600e3 ? 0 : span <= 48 * 3600e3 ? 60 : 600;
  const hist = level ? await api(`/api/v1/readings?node=${node}&dev=${level.dev}&from=${from}&to=${to}&resolution=${res}&limit=5000`) : { points: [] };
  const canCommand = COMMAND_ROLES.includes(me.role);
  const sign = info.devices.find((d) => d.kind === "sign"), gate = info.devices.find((d) => d.kind === "gate");
  $main().innerHTML = `<section class="card" data-testid="site-page" data-gate="${esc(site?.gate ?? "")}">
    <p><a href="#/">← ${t("back")}</a></p>
    <h2>${esc(site?.name ?? node)} <span class="badge ${esc(site?.level ?? "clear")}" data-testid="site-level">${t(site?.level ?? "clear")}</span></h2>
    <p>${esc(site?.address ?? "")} · ${site?.online ? t("online") : t("offline")} · ${t("gate")}: <b data-testid="gate-state">${esc(site?.gate ?? "?")}</b> · ${t("board")}: “${esc(site?.sign ?? "")}”</p>
    <h2>${t("history")}</h2>
    <div class="actions">${[1, 6, 24, 168].map((hh) => `<button type="button" class="${!zoomed && hh === range ? "on" : ""}" onclick="location.hash='#/site/${esc(node)}?h=${hh}'">${hh < 24 ? `${hh} h` : `${hh / 24} d`}</button>`).join("")}
      ${zoomed ? `<button type="button" data-testid="zoom-reset" onclick="location.hash='#/site/${esc(node)}?h=${range}'">${t("zoom_reset")}</button>` : ""}
      <span class="muted">${t("zoom_hint")}</span></div>
    ${chartSvg(hist.points, level?.thresholds, from, to)}
    <h2>${t("devices")}</h2><table>${info.devices.map((d) => `<tr><td>${esc(d.dev)}</td><td>${esc(d.kind)}</td><td>${esc(d.model)}</td>
      <td class="muted">${esc(JSON.stringify(info.health?.devices?.[d.dev] ?? {}))}</td></tr>`).join("")}</table>
    ${canCommand ? `<h2>${t("commands")}</h2><div class="actions" data-testid="commands">
      ${sign ? `<input id="message" value="前方积水 减速慢行" size="20"><button type="button" data-cmd="sign.show" data-dev="${esc(sign.dev)}">${t("show_message")}</button>` : ""}
      ${gate ? `<button type="button" class="warn" data-cmd="gate.close" data-dev="${esc(gate.dev)}">${t("close_gate")}</button>
               <button type="button" data-cmd="gate.open" data-dev="${esc(gate.dev)}">${t("open_gate")}</button>` : ""}
      </div><p data-testid="command-result" id="command-result">${esc(commandNotes[node] ?? "")}</p>` : ""}
  </section>`;
  const chart = document.querySelector('[data-testid="chart"]');
  if (chart) zoomable(chart, (a, b) => { location.hash = `#/site/${node}?h=${range}&from=${a}&to=${b}`; });
  document.querySelectorAll("[data-cmd]").forEach((b) => {
    b.onclick = async () => {
      if (!confirm(`${t("confirm_cmd")} ${b.textContent}`)) return;
      const say = (text) => {
        commandNotes[node] = text;
        const out = document.getElementById("command-result");  // the page may have been redrawn
        if (out) out.textContent = text;
      };
      const body = { node, type: b.dataset.cmd, dev: b.dataset.dev, reason: "dashboard", args: {} };
      if (b.dataset.cmd === "sign.show") body.args.message = document.getElementById("message").value;
      try {
        let c = await api("/api/v1/commands", { method: "POST", body: JSON.stringify(body) });
        say(`${b.textContent} · ${t("result")}: ${c.status}`);
        for (let i = 0; i < 40 && c.status === "sent"; i++) {
          await new Promise((r) => setTimeout(r, 500));
          c = await api(`/api/v1/commands/${c.cmd_id}`);
        }
        say(`${b.textContent} · ${t("result")}: ${c.status} ${c.result_reason ?? ""}`);
      } catch (e) { say(e.message); }
    };
  });
}

// ------------------------------------------------------------- measures

// Horizontal bars, one row per item; ``parts`` stack (each a [value, class]).
const textWidth = (s) => [...String(s)].reduce((n, c) => n + (c.charCodeAt(0) > 0x2e7f ? 12.5 : 7), 0);  // 12px font

function barChart(testid, title, rows, fmt) {
  const rowH = 22, labelW = Math.min(330, Math.max(80, ...rows.map((r) => textWidth(r.label))) + 10);
  const barW = 320, w = labelW + barW + 60;
  const max = Math.max(1e-9, ...rows.map((r) => r.parts.reduce((a, [v]) => a + (v ?? 0), 0)));
  const body = rows.map((r, i) => {
    let x = labelW;
    const bars = r.parts.map(([v, cls]) => { const bw = ((v ?? 0) / max) * barW, out = `<rect class="bar ${cls}" x="${x}" y="${i * rowH + 4}" width="${bw.toFixed(1)}" height="${rowH - 8}"></rect>`; x += bw; return out; }).join("");
    return `<g data-testid="bar-row"><text x="${labelW - 6}" y="${i * rowH + 15}" text-anchor="end">${esc(r.label)}</text>${bars}<text x="${x + 6}" y="${i * rowH + 15}">${esc(fmt(r))}</text></g>`;
  }).join("");
  return `<figure class="card"><h2>${title}</h2><svg class="bars" data-testid="${testid}" width="${w}" height="${Math.max(rowH, rows.length * rowH)}" viewBox="0 0 ${w} ${Math.max(rowH, rows.length * rowH)}">${body || `<text x="0" y="15">${t("none")}</text>`}</svg></figure>`;
}

async function renderMeasures() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  // Today as the collector counts months and seasons (its time zone, not the browser's):
  // late on a month's last day in UTC it is already the next month in Guangzhou.
  const [year, mm, dd] = new Intl.DateTimeFormat("en-CA", { timeZone: uiConfig.timezone || undefined,
    year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date()).split("-");
  const month = params.get("month") || `${year}-${mm}`;
  // The season that has begun: before its first day, last year's.
  const begun = `${mm}-${dd}` >= (uiConfig.flood_season?.start ?? "04-01");
  const season = params.get("season") || String(begun ? Number(year) : Number(year) - 1);
  const [units, sites, known] = await Promise.all([
    api(`/api/v1/measures/units?month=${month}`), api(`/api/v1/measures/sites?season=${season}`), api("/api/v1/sites"),
  ]);
  const names = Object.fromEntries(known.map((s) => [s.node, s.name || s.node]));
  const pct = (v) => (v == null ? "–" : `${(v * 100).toFixed(1)}%`);
  const maxT = Math.max(1, ...units.map((u) => u.tickets));
  const charts = `<div class="charts">
    ${barChart("chart-on-time", t("on_time_by_unit"), units.map((u) => ({ label: u.unit, parts: [[u.on_time_accept_rate, ""]], v: u.on_time_accept_rate })), (r) => pct(r.v))}
    ${barChart("chart-escalations", t("escalations_by_unit"), units.map((u) => ({ label: u.unit, parts: [[u.escalations, "danger"]], v: u.escalations })), (r) => String(r.v))}
    ${barChart("chart-alerts", t("alerts_by_site"), sites.map((s) => ({ label: names[s.node] ?? s.node, parts: [[s.alerts.warning, "warning"], [s.alerts.danger, "danger"]], v: s.alerts.warning + s.alerts.danger })), (r) => String(r.v))}
    ${barChart("chart-peak", t("peak_by_site"), sites.map((s) => ({ label: names[s.node] ?? s.node, parts: [[s.peak_depth_mm, "danger"]], v: s.peak_depth_mm })), (r) => (r.v == null ? "–" : String(r.v)))}
  </div>`;
  $main().innerHTML = `${charts}<section class="card"><h2>${t("measures_units")}</h2>
    <div class="form-row"><label>${t("month")}</label><input id="month" type="month" value="${month}"></div>
    <table data-testid="unit-measures"><tr><th>${t("unit")}</th><th>${t("tickets")}</th><th></th><th>${t("on_time_accept")}</th><th>${t("on_time_handle")}</th>
      <th>${t("avg_h")}</th><th>${t("p90_h")}</th><th>${t("satisfaction")}</th><th>${t("escalations")}</th></tr>
      ${units.map((u) => `<tr><td>${esc(u.unit)}</td><td>${u.tickets}</td><td><svg width="120" height="12"><rect class="bar" width="${(u.tickets / maxT) * 120}" height="12"></rect></svg></td>
        <td>${pct(u.on_time_accept_rate)}</td><td>${pct(u.on_time_handle_rate)}</td><td>${u.handling_hours_avg ?? "–"}</td><td>${u.handling_hours_p90 ?? "–"}</td>
        <td>${pct(u.satisfaction)}</td><td>${u.escalations}</td></tr>`).join("")}</table></section>
    <section class="card" style="margin-top:16px"><h2>${t("measures_sites")}</h2>
    <div class="form-row"><label>${t("season")}</label><input id="season" type="number" value="${season}" min="2000" max="2100"></div>
    <table><tr><th>${t("site")}</th><th>${t("warning")}</th><th>${t("danger")}</th><th>${t("peak")}</th><th>${t("hours_above")}</th></tr>
      ${sites.map((s) => `<tr><td>${esc(names[s.node] ?? s.node)}</td><td>${s.alerts.warning}</td><td>${s.alerts.danger}</td><td>${s.peak_depth_mm ?? "–"}</td><td>${s.hours_above_threshold}</td></tr>`).join("")}</table></section>`;
  document.getElementById("month").onchange = (ev) => { location.hash = `#/measures?month=${ev.target.value}&season=${season}`; };
  document.getElementById("season").onchange = (ev) => { location.hash = `#/measures?month=${month}&season=${ev.target.value}`; };
}

// ---------------------------------------------------------------- router

async function route() {
  translate();
  const hash = location.hash || "#/";
  if (!token()) { document.getElementById("nav").hidden = true; renderLogin(); return; }
  if (!me) {
    try { me = await api("/api/v1/me"); } catch (e) { return; }
  }
  if (!outline) outline = await (await fetch("/dashboard/huangpu.geojson")).json();
  if (!uiConfig.loaded) uiConfig = { ...(await api("/api/v1/ui-config")), loaded: true };
  if (!vocab) vocab = await api("/api/v1/vocab");
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = `${me.username} (${me.role})`;
  document.getElementById("logout").hidden = false;
  liveUpdates();
  const path = hash.slice(1).split("?")[0];
  try {
    if (path.startsWith("/ticket/")) await renderTicket(path.slice(8));
    else if (path.startsWith("/site/")) await renderSite(path.slice(6));
    else if (path.startsWith("/tickets")) await renderTickets();
    else if (path.startsWith("/measures")) await renderMeasures();
    else if (path === "/login") { location.hash = "#/"; }
    else await renderOverview();
  } catch (e) {
    if (e.message !== "401") $main().innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

document.getElementById("lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("lang", lang); route(); };
document.getElementById("logout").onclick = logout;
window.addEventListener("hashchange", route);
route();
