// Floodgate dashboard: plain JavaScript, no build step, no CDN (it must work offline).
"use strict";

// Every word the dashboard shows, in both languages. A key missing from one of them is
// recorded in window.missingKeys (the browser tests fail on it) and shown as the key.
const I18N = {
  zh: {
    title: "有呼必应 · 积水预警", nav_overview: "总览", nav_tickets: "工单", nav_measures: "考核指标", logout: "退出",
    live: "实时更新", wet: "有水", dry: "无水", login: "登录", username: "用户名", password: "密码", login_failed: "用户名或密码错误",
    map: "站点地图", alerts: "当前告警", tickets: "工单队列", ticket_count: "工单数", site: "站点", level: "等级",
    gate: "道闸", board: "情报板", online: "在线", offline: "离线", none: "无", state: "状态", priority: "优先级",
    unit: "责任单位", kind: "类型", created: "创建时间", timeline: "处置时间线", note: "说明", score: "评分",
    of_ticket: "合并到工单", commands: "远程控制", show_message: "发布情报板信息", close_gate: "关闭道闸",
    open_gate: "开启道闸", confirm_cmd: "确认发送命令？", result: "结果", depth: "水深", history: "水深曲线",
    devices: "设备", measures_units: "单位月度考核", measures_sites: "站点汛期统计", report_csv: "导出 CSV", report_pdf: "打印版 PDF", month: "月份", season: "汛期",
    on_time_accept: "按时签收率", on_time_handle: "按时处置率", avg_h: "平均处置时长", p90_h: "P90 处置时长",
    satisfaction: "满意率", escalations: "督办次数", peak: "最高水深", hours_above: "超阈值时长", all: "全部",
    overdue: "超时", back: "返回", zoom_hint: "在曲线上拖动可放大", zoom_reset: "还原",
    on_time_by_unit: "各单位按时签收率", escalations_by_unit: "各单位督办次数", peak_by_site: "各站点最高水深",
    alerts_by_site: "各站点积水次数（按最高等级）", floods: "积水次数", warning_only: "仅达预警", reached_danger: "达到危险", faults: "故障次数", evaluated: "已评价",
    legend: "图例", legend_gate_closed: "道闸已关闭", legend_gate_moving: "道闸动作中", zoom_in: "放大", zoom_out: "缩小",
    map_reset: "复位", deadline: "截止时间", time_left: "剩余", late_by: "已超时", escalation: "督办等级",
    escalation_none: "未督办", dispatch_due: "派遣期限", accept_due: "签收期限", handle_due: "处置期限", open_ticket: "未结工单",
    last_seen: "站点最后上报", last_good: "最后成功读取",
    last_seen_hint: "收到该站点最近一条消息（任何类型）的时间", last_good_hint: "该设备最近一次正常应答：最新的正常读数，或最近一次心跳所报的时间，取较新者",
    tz_note: "时间均为 {tz}", tz_hint: "工单、告警、曲线与考核指标都按本辖区配置的时区显示，而不是浏览器的时区", requests: "请求", timeouts: "超时", errors: "错误", request: "请求", timeout: "超时", error: "错误", since_start: "（代理启动后 {d}内的累计）",
    fault_reason: "故障原因", model: "型号", max: "最大值", band: "最小—最大范围", avg: "平均值",
    mm: "毫米", hours: "小时", h_short: "小时", ago: "{n}前", in: "{n}后", sec: "{n} 秒", min: "{n} 分钟",
    hr: "{n} 小时", day: "{n} 天", system: "系统", error_detail: "详情",
    "level.clear": "正常", "level.warning": "预警", "level.danger": "危险", "level.offline": "离线",
    "priority.fault": "故障", "priority.warning": "预警", "priority.danger": "危险",
    "state.open": "待派遣", "state.dispatched": "已派遣", "state.accepted": "已签收", "state.handled": "已处置",
    "state.verified": "已核查", "state.closed": "已结案", "state.duplicate": "已合并",
    "gate.open": "开启", "gate.closed": "关闭", "gate.closing": "关闭中", "gate.opening": "开启中", "gate.unknown": "未知",
    "gate.fault": "故障", "gate.moving": "动作中",
    "alert.flood": "积水", "alert.immersion": "浸水", "alert.sensor_fault": "传感器故障", "alert.comms_lost": "通信中断",
    "alert.forecast": "积水预报",
    "ticket.flood": "{site}积水", "ticket.sensor_fault": "{site}传感器故障", "ticket.comms_lost": "站点失联：{site}",
    "dev.level": "水位计", "dev.immersion": "浸水传感器", "dev.sign": "情报板", "dev.gate": "道闸",
    "action.dispatch": "派遣", "action.accept": "签收", "action.reject": "退回", "action.report": "处置反馈",
    "action.verify": "核查", "action.evaluate": "评价结案", "action.reopen": "重新打开", "action.merge": "合并",
    "action.comment": "备注", "action.open": "立案", "action.alert": "告警", "action.priority": "优先级变更",
    "action.escalate": "督办", "action.merged": "合并入", "action.close": "结案",
    "role.viewer": "查看", "role.operator": "值守员", "role.dispatcher": "调度员", "role.unit": "责任单位人员", "role.forecaster": "气象预报", "role.admin": "管理员",
    "health.ok": "正常", "health.failing": "读取失败", "health.quarantined": "已隔离",
    "cmd.sent": "已发送", "cmd.done": "已完成", "cmd.rejected": "已拒绝", "cmd.failed": "失败", "cmd.timeout": "超时未回复",
    "why.unsafe": "不安全", "why.override": "现场手动开关已打开", "why.bad_command": "命令有误", "why.forbidden": "无权限",
    "ladder.leader": "单位领导", "ladder.supervision": "督查督办",
    "err.not_found": "找不到", "err.conflict": "与当前状态冲突，请刷新后重试", "err.invalid": "输入有误", note_required: "请先填写说明：“{action}”需要说明",
    "problem.missing": "必填", "problem.string_too_short": "不能为空", "problem.string_too_long": "太长", "problem.string_pattern_mismatch": "格式不对",
    "err.no_key": "未配置命令密钥", "err.unavailable": "服务暂不可用（消息代理或数据库）", "err.unauthorized": "请重新登录",
    "err.forbidden": "您的角色无权执行此操作", "err.too_many": "尝试次数过多，请稍后再试", "err.other": "请求失败",
    "sys.auto_dispatch": "自动派遣规则", "sys.water_gone": "传感器显示积水已退", "sys.back": "积水再次出现",
    "sys.priority": "优先级 {a} → {b}", "sys.rejected_to": "{unit} 退回，转兜底单位", "sys.routed": "分派给 {unit}",
    "sys.escalated": "{deadline}超时，督办等级 {level}，通知 {to}", "sys.late": "（迟到的告警）", "sys.leader_of": "{name}",
    exercise: "演练", exercise_hint: "演练或模拟站点：其告警不是真实的", "deadline.dispatch": "派遣", "deadline.accept": "签收", "deadline.handle": "处置", "err.still_wet": "站点仍有积水",
    confirm_wet: "站点的传感器仍显示有积水。仍要核查吗？（将记录在时间线上）", confirmed_wet: "仍有积水时确认核查",
    at_risk: "未来 {h} 小时可能积水的站点", eta: "预计达到", probability: "概率", peak_forecast: "预计最高",
    forecast: "积水预报", forecast_band: "预报范围（10%–90%）：降雨预报的离散加模型拟合误差", forecast_median: "预报中位数", now: "现在",
    legend_forecast: "预报可能积水", forecast_hint: "预报，不是实测：预报不会关闭道闸",
    "fc.cross": "预计 {when} 达到{level}（概率 {p}）", "fc.peak": "预计最高 {peak}", "fc.quiet": "未来 {h}内预计不会超过阈值",
    "fc.no_model": "暂无预报：该站点还没有拟合的模型（历史数据不足）", "fc.no_rain": "暂无预报：没有覆盖该站点的降雨预报",
    "fc.stale": "暂无预报：降雨预报或水深数据已过期", "fc.unavailable": "暂无预报：预报服务暂不可用",
    "fc.not_running": "没有正在运行的预报（{why}）", "fc.n_no_model": "{n} 个站点没有模型", "fc.n_at_risk": "{n} 个站点有风险", "fc.n_forecasting": "{n} 个站点在预报", "fc.n_no_rain": "{n} 个站点没有降雨预报",
    "fc.n_stale": "{n} 个站点的预报已过期",
    "fc.of": "{when} 的预报", "fc.head": "{when} 的积水预报", "fc.pending": "暂无预报：模型已拟合，下一轮预报时生成",
    "fc.band": "阴影为 10%–90% 的范围（降雨预报的离散加模型拟合误差）：最高处 {lo}–{hi}，宽 {w}",
    "fc.rain": "降雨预报 {source}，发布于 {when}",
    "fc.fit": "模型用 {span}的历史数据拟合（{events} 场降雨，{n} 个数据点），在这段历史上的均方根误差为 {rmse}：这不是预报的误差，预报的不确定性看阴影范围",
    "fc.little": "历史数据少（{events} 场降雨）：拟合误差比真实误差小",
    forecast_tag: "预报", forecast_ticket_hint: "由积水预报立案：现场尚未实测到积水", forecast_model: "降雨预报模型",
    prediction: "预报", "fc.off": "预报已解除：降雨预报不再显示会积水", "fc.expected": "预计 {when} 达到",
    "action.measured": "转为实测", "action.deadline": "期限", "sys.measured": "{dev}实测到{level}，工单不再是预报",
    "sys.measured_vs": "（预报预计 {when}）", "sys.forecast_deadline": "预计 {expected} 积水：须在 {due} 前派遣",
    received_late: "{when} 收到，迟到 {late}",
    gate_closing_in: "道闸即将关闭（{n}后）", gate_closing_now: "道闸即将关闭", gate_closing_board: "情报板警示后道闸将关闭",
    gate_closing_hint: "情报板正在警示驾驶员，道闸仍开启；关闭时间由现场设备报告",
  },
  en: {
    title: "Floodgate · flood warnings", nav_overview: "Overview", nav_tickets: "Tickets", nav_measures: "Measures", logout: "Log out",
    live: "live updates", wet: "wet", dry: "dry", login: "Log in", username: "User name", password: "Password", login_failed: "Wrong user name or password",
    map: "Sites", alerts: "Active alerts", tickets: "Ticket queue", ticket_count: "Tickets", site: "Site", level: "Level",
    gate: "Gate", board: "Board", online: "online", offline: "offline", none: "none", state: "State", priority: "Priority",
    unit: "Unit", kind: "Kind", created: "Created", timeline: "Timeline", note: "Note", score: "Score",
    of_ticket: "Merge into ticket", commands: "Commands", show_message: "Show on board", close_gate: "Close gate",
    open_gate: "Open gate", confirm_cmd: "Send this command?", result: "Result", depth: "Depth", history: "Water depth",
    devices: "Devices", measures_units: "Units by month", measures_sites: "Sites by season", report_csv: "Export CSV", report_pdf: "Printable PDF", month: "Month", season: "Season",
    on_time_accept: "On-time accept", on_time_handle: "On-time handling", avg_h: "Avg handling", p90_h: "P90 handling",
    satisfaction: "Satisfaction", escalations: "Escalations", peak: "Peak depth", hours_above: "Time above threshold", all: "All",
    overdue: "Overdue", back: "Back", zoom_hint: "Drag across the chart to zoom in", zoom_reset: "Reset zoom",
    on_time_by_unit: "On-time acceptance by unit", escalations_by_unit: "Escalations by unit", peak_by_site: "Peak depth by site",
    alerts_by_site: "Floods by site (by the highest level)", floods: "Floods", warning_only: "Warning only", reached_danger: "Reached danger", faults: "Faults", evaluated: "Evaluated",
    legend: "Legend", legend_gate_closed: "gate closed", legend_gate_moving: "gate moving", zoom_in: "Zoom in", zoom_out: "Zoom out",
    map_reset: "Reset", deadline: "Deadline", time_left: "left", late_by: "late by", escalation: "Escalation",
    escalation_none: "not escalated", dispatch_due: "Dispatch by", accept_due: "Accept by", handle_due: "Handle by", open_ticket: "Open ticket",
    last_seen: "Last report from the site", last_good: "Last good read",
    last_seen_hint: "when the site's latest message of any kind arrived", last_good_hint: "the device's latest good answer: its newest good reading or the time the last heartbeat reported, whichever is later",
    tz_note: "times in {tz}", tz_hint: "tickets, alerts, charts and measures all show the district's configured time zone, not the browser's", requests: "requests", timeouts: "timeouts", errors: "errors", request: "request", timeout: "timeout", error: "error", since_start: "in the agent's first {d} (totals since it started)",
    fault_reason: "fault", model: "Model", max: "maximum", band: "min–max range", avg: "average",
    mm: "mm", hours: "hours", h_short: "h", ago: "{n} ago", in: "in {n}", sec: "{n} s", min: "{n} min",
    hr: "{n} h", day: "{n} d", system: "system", error_detail: "Details",
    "level.clear": "clear", "level.warning": "warning", "level.danger": "danger", "level.offline": "offline",
    "priority.fault": "fault", "priority.warning": "warning", "priority.danger": "danger",
    "state.open": "open", "state.dispatched": "dispatched", "state.accepted": "accepted", "state.handled": "handled",
    "state.verified": "verified", "state.closed": "closed", "state.duplicate": "duplicate",
    "gate.open": "open", "gate.closed": "closed", "gate.closing": "closing", "gate.opening": "opening", "gate.unknown": "unknown",
    "gate.fault": "fault", "gate.moving": "moving",
    "alert.flood": "water", "alert.immersion": "immersion", "alert.sensor_fault": "sensor fault", "alert.comms_lost": "site silent",
    "alert.forecast": "forecast water",
    "ticket.flood": "Water at {site}", "ticket.sensor_fault": "Sensor fault at {site}", "ticket.comms_lost": "Site silent: {site}",
    "dev.level": "level sensor", "dev.immersion": "immersion sensor", "dev.sign": "board", "dev.gate": "gate",
    "action.dispatch": "Dispatch", "action.accept": "Accept", "action.reject": "Reject", "action.report": "Report handling",
    "action.verify": "Verify", "action.evaluate": "Evaluate and close", "action.reopen": "Reopen", "action.merge": "Merge",
    "action.comment": "Comment", "action.open": "Opened", "action.alert": "Alert", "action.priority": "Priority",
    "action.escalate": "Escalated", "action.merged": "Merged in", "action.close": "Closed",
    "role.viewer": "viewer", "role.operator": "operator", "role.dispatcher": "dispatcher", "role.unit": "unit member", "role.forecaster": "forecaster", "role.admin": "admin",
    "health.ok": "OK", "health.failing": "failing", "health.quarantined": "quarantined",
    "cmd.sent": "sent", "cmd.done": "done", "cmd.rejected": "rejected", "cmd.failed": "failed", "cmd.timeout": "no answer",
    "why.unsafe": "unsafe", "why.override": "the manual override switch is on at the site", "why.bad_command": "bad command", "why.forbidden": "forbidden",
    "ladder.leader": "unit leader", "ladder.supervision": "supervision",
    "err.not_found": "Not found", "err.conflict": "Conflicts with the current state; reload and try again", "err.invalid": "Invalid input", note_required: "Write a note first: \"{action}\" needs one",
    "problem.missing": "required", "problem.string_too_short": "may not be empty", "problem.string_too_long": "too long", "problem.string_pattern_mismatch": "not in the expected form",
    "err.no_key": "No command key configured", "err.unavailable": "Not available now (broker or database)", "err.unauthorized": "Please log in again",
    "err.forbidden": "Your role may not do this", "err.too_many": "Too many attempts; try again later", "err.other": "The request failed",
    "sys.auto_dispatch": "auto-dispatch rule", "sys.water_gone": "the sensor shows the water gone", "sys.back": "the water is back",
    "sys.priority": "priority {a} → {b}", "sys.rejected_to": "rejected by {unit}: to the fallback unit", "sys.routed": "routed to {unit}",
    "sys.escalated": "{deadline} deadline missed: level {level}, to {to}", "sys.late": "(arrived late)", "sys.leader_of": "the leader of {unit}",
    exercise: "exercise", exercise_hint: "a drill or simulated site: what it raises is not real", "deadline.dispatch": "dispatch", "deadline.accept": "accept", "deadline.handle": "handling", "err.still_wet": "The site still reads water",
    confirm_wet: "The site's sensor still reads water. Verify anyway? (It is recorded on the timeline.)", confirmed_wet: "verified while the site read water",
    at_risk: "Sites at risk in the next {h} hours", eta: "Expected", probability: "Probability", peak_forecast: "Expected peak",
    forecast: "Forecast", forecast_band: "forecast range (10–90 %): the rainfall forecast's spread and the model's fit error", forecast_median: "forecast median", now: "now",
    legend_forecast: "water forecast", forecast_hint: "a forecast, not a measurement: a forecast never closes a gate",
    "fc.cross": "expected to reach {level} {when} (probability {p})", "fc.peak": "expected peak {peak}", "fc.quiet": "not expected to cross a threshold in the next {h}",
    "fc.no_model": "No forecast: the site has no fitted model yet (too little history)", "fc.no_rain": "No forecast: no rainfall forecast covers this site",
    "fc.stale": "No forecast: the rainfall forecast or the depth is out of date", "fc.unavailable": "No forecast: the forecast is not available",
    "fc.not_running": "No forecasts running ({why})", "fc.n_no_model": "{n} sites without a model", "fc.n_at_risk": "{n} at risk", "fc.n_forecasting": "{n} forecasting", "fc.n_no_rain": "{n} sites without rainfall",
    "fc.n_stale": "{n} sites out of date",
    "fc.of": "forecast of {when}", "fc.head": "Forecast of {when}", "fc.pending": "No forecast yet: the site's model is fitted, its first forecast comes with the next round",
    "fc.band": "shaded: the 10–90 % range (the rainfall forecast's spread and the model's fit error), at the peak {lo}–{hi}, {w} wide",
    "fc.rain": "rainfall forecast {source} issued {when}",
    "fc.fit": "model fitted on {span} of history ({events} rain events, {n} points); its rms error on that history is {rmse}: not the forecast's error, which the shaded range shows",
    "fc.little": "little history ({events} rain events): its fit error reads smaller than the real one",
    forecast_tag: "Forecast", forecast_ticket_hint: "opened by a forecast: no water measured at the site yet", forecast_model: "rainfall model",
    prediction: "Forecast", "fc.off": "forecast withdrawn: the rainfall forecast no longer expects water", "fc.expected": "expected {when}",
    "action.measured": "Measured", "action.deadline": "Deadline", "sys.measured": "{dev} measured {level}: no longer a forecast",
    "sys.measured_vs": " (the forecast expected it {when})", "sys.forecast_deadline": "water expected {expected}: dispatch by {due}",
    received_late: "received {when}, {late} late",
    gate_closing_in: "gate closing in {n}", gate_closing_now: "gate closing now", gate_closing_board: "gate closes once the board warns",
    gate_closing_hint: "the board is warning drivers and the gate is still open; the time is the one the site's agent gave",
  },
};
// The vocabulary (states, kinds, actions) comes from the collector: GET /api/v1/vocab.
// Which actions a user may take on a ticket comes with the ticket (allowed_actions).
let vocab = null;
const COMMAND_ROLES = ["operator", "dispatcher", "admin"];
const BOARD_MESSAGE = "前方积水 减速慢行";  // what the board shows: Chinese for the road, whatever the UI's language

let lang = localStorage.getItem("lang") || "zh";
let me = null;
let outline = null;
let uiConfig = {};
let source = null;
let refreshTimer = null;
const drafts = {};  // what is being written, per page and field: a live redraw keeps it
let routeSeq = 0;  // which drawing is current: a slower one that started earlier must not overwrite it
const commandNotes = {};  // the last command's result per site: survives a live redraw
const actionErrors = {};  // the last refused action per ticket: survives a live redraw
const devKinds = {};  // node → {dev: kind}, for naming a device by what it is
window.missingKeys = new Set();
const $main = () => document.getElementById("main");
// Chinese and a Latin id or number side by side get a space between them, where a value meets the
// words around it ("水位计 lvl-1 实测到预警", not "lvl-1实测到预警"); markup is not text.
const CJK_CHAR = /[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]/u, LATIN_CHAR = /[A-Za-z0-9]/;
const shownText = (html) => String(html).replace(/<[^>]*>/g, "");
function cjkGap(before, after) {
  const a = shownText(before).slice(-1), b = shownText(after).slice(0, 1);
  return (CJK_CHAR.test(a) && LATIN_CHAR.test(b)) || (LATIN_CHAR.test(a) && CJK_CHAR.test(b)) ? " " : "";
}
const t = (k, vars) => {
  let s = I18N[lang][k];
  if (s === undefined) { window.missingKeys.add(`${lang}:${k}`); s = k; }
  if (!vars) return s;
  // Each {name} replaced by its value; in Chinese, spaced from the text beside it where that is Latin.
  const parts = s.split(/(\{\w+\})/).map((p) => { const n = p.match(/^\{(\w+)\}$/)?.[1]; return n !== undefined && n in vars ? { v: String(vars[n]) } : p; });
  return parts.map((p, i) => {
    if (typeof p === "string" || lang !== "zh") return typeof p === "string" ? p : p.v;
    const prev = parts[i - 1], next = parts[i + 1];
    const before = typeof prev === "string" ? cjkGap(prev, p.v) : "";
    const after = next !== undefined ? cjkGap(p.v, typeof next === "string" ? next : next.v) : "";
    return before + p.v + after;
  }).join("");
};
// Punctuation between the parts of a line: full-width in Chinese ("1,204 请求，3 超时"; the
// thousands separator of a number stays as it is).
const comma = () => (lang === "zh" ? "，" : ", ");
const colon = () => (lang === "zh" ? "：" : ": ");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
// Text as it came (ids, models, user names, people's notes, board messages): not the UI's to translate.
const raw = (s) => `<span translate="no">${esc(s)}</span>`;
const locale = () => (lang === "zh" ? "zh-CN" : "en-GB");
// Every time is shown in the district's time zone (the collector's config), whatever the browser's.
const tz = () => uiConfig.timezone || undefined;
const when = (ms, seconds = false) => (ms ? new Date(ms).toLocaleString(locale(), { dateStyle: "short", timeStyle: seconds ? "medium" : "short", timeZone: tz() }) : "");
const clockTime = (ms) => new Date(ms).toLocaleTimeString(locale(), { timeStyle: "short", timeZone: tz() });
const token = () => sessionStorage.getItem("token");
const num = (v, digits = 0) => Number(v).toLocaleString(locale(), { minimumFractionDigits: digits, maximumFractionDigits: digits });
const mm = (v) => (v == null ? "–" : `${num(v)} ${t("mm")}`);

// A duration in words: "12 s", "5 min", "3 h", "2 d".
function duration(ms) {
  const s = Math.max(0, Math.round(Math.abs(ms) / 1000));
  if (s < 90) return t("sec", { n: s });
  if (s < 90 * 60) return t("min", { n: Math.round(s / 60) });
  if (s < 36 * 3600) return t("hr", { n: Math.round(s / 3600) });
  return t("day", { n: Math.round(s / 86400) });
}
const ago = (ms) => (ms ? t("ago", { n: duration(serverNow() - ms) }) : "–");

const siteName = (node, given) => uiConfig.names?.sites?.[node]?.[lang] ?? given ?? node;
// The site's address: the registry's in the UI's language, else its Chinese one, else the site's own (as given).
function addressHtml(node, given) {
  const a = uiConfig.names?.addresses?.[node];
  if (a?.[lang]) return `<span data-testid="address">${esc(a[lang])}</span> · `;
  const shown = a?.zh ?? given;
  return shown ? `<span data-testid="address" translate="no">${esc(shown)}</span> · ` : "";
}
const unitName = (id) => uiConfig.names?.units?.[id]?.[lang] ?? uiConfig.names?.units?.[id]?.zh ?? id;
// Who did it: the system, a user ("user:chen"), or a unit's member ("unit:drainage-dasha:wang").
function actorName(a) {
  if (a === "system") return t("system");
  const [kind, ...rest] = String(a ?? "").split(":");
  if (kind === "unit" && rest.length >= 2) return `${raw(rest.slice(1).join(":"))} (${esc(unitName(rest[0]))})`;
  return raw(kind === "user" ? rest.join(":") : a);
}
const ticketTitle = (k) => t(`ticket.${k.kind}`, { site: siteName(k.node) });
const devName = (node, dev) => { const kind = devKinds[node]?.[dev]; return kind ? `${t(`dev.${kind}`)} ${raw(dev)}` : raw(dev); };
const badgeClass = (priority) => (priority === "fault" ? "fault" : esc(priority));

// A refusal from the API: its machine code translated (the English detail kept for a tooltip).
class ApiError extends Error {
  constructor(status, body) {
    super(typeof body === "object" ? body.detail : String(body));
    this.status = status;
    this.code = (typeof body === "object" && body.code) || null;
    this.problems = (typeof body === "object" && body.problems) || [];
  }
  shown() {
    const key = `err.${this.code}`;
    return I18N[lang][key] !== undefined ? t(key) : t("err.other");
  }
}
// Each invalid field of a 422 in words, on the page (a phone shows no tooltip): the field by the
// name the form gives it, the problem translated from its code, else the API's words as sent.
const FIELD_LABELS = { note: "note", score: "score", of: "of_ticket", unit: "unit" };
function problemsHtml(problems) {
  return problems.map((p) => {
    const field = String(p.where ?? "").split(".").pop();
    const name = FIELD_LABELS[field] ? t(FIELD_LABELS[field]) : raw(field);
    const what = I18N[lang][`problem.${p.code}`] !== undefined ? t(`problem.${p.code}`) : raw(p.problem);
    return `<span data-testid="error-problem" data-where="${esc(p.where)}">${name}${colon()}${what}</span>`;
  }).join(lang === "zh" ? "；" : "; ");
}
const errorHtml = (e) => (e instanceof ApiError
  ? `${esc(e.shown())}${e.problems.length ? `${colon()}${problemsHtml(e.problems)}` : ""} <span class="muted" translate="no" title="${esc(e.message)}" data-testid="error-code">(${esc(e.code ?? e.status)})</span>`
  : esc(e.message));

// The collector's clock, not the browser's: deadlines, countdowns, "ago" and "in" count to the
// time the collector keeps (an office PC's clock may be minutes off). Each API answer says it
// (X-Server-Time-Ms, as the answer started): the offset from the round trip's middle, of the
// quickest of the last few answers (the least of its time in transit is in doubt).
const clockSamples = [];
let clockOffset = 0;
function learnClock(r, sent, got) {
  const at = Number(r.headers.get("X-Server-Time-Ms"));
  if (!at) return;
  clockSamples.push({ trip: got - sent, offset: Math.round(at - (sent + got) / 2) });
  if (clockSamples.length > 8) clockSamples.shift();
  clockOffset = clockSamples.reduce((a, b) => (b.trip < a.trip ? b : a)).offset;
}
const serverNow = () => Date.now() + clockOffset;

async function api(path, opts = {}) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const sent = Date.now();
  const r = await fetch(path, { ...opts, headers });
  learnClock(r, sent, Date.now());
  if (r.status === 401 && !path.endsWith("/auth/login")) { logout(); throw new Error("401"); }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

async function learnDevices(nodes) {
  await Promise.all([...new Set(nodes)].filter((n) => !devKinds[n]).map(async (n) => {
    const info = await api(`/api/v1/nodes/${encodeURIComponent(n)}`).catch(() => ({ devices: [] }));
    devKinds[n] = Object.fromEntries(info.devices.map((d) => [d.dev, d.kind]));
  }));
}

function translate() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.getElementById("live").title = t("live");
  document.getElementById("lang").textContent = lang === "zh" ? "EN" : "中文";
  document.title = t("title");
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
  source.addEventListener("end", () => logout());  // the token expired or was revoked: log in again
  for (const kind of ["alert", "state", "event", "ticket", "forecast", "resync"]) {
    source.addEventListener(kind, () => {
      const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement?.tagName);
      if (typing) return;  // never wipe what someone is writing
      // A new forecast round: the pages that show a forecast (all the same round's) draw it.
      if (kind === "forecast" && !/^#\/(site\/|ticket\/|$)|^$/.test(location.hash)) return;
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
      document.getElementById("login-error").innerHTML = e.status === 401 ? esc(t("login_failed")) : errorHtml(e);
    }
  };
}

// ------------------------------------------------------------- overview

const MAP = { w: 800, h: 520 };
let mapView = null;  // the part of the map shown (viewBox): kept across live redraws
let mapSites = [];

// The site's name in the UI's language: the registry's, else what the site calls itself (as given).
const siteNameHtml = (node, given) => (uiConfig.names?.sites?.[node]?.[lang] ? esc(siteName(node, given)) : raw(given ?? node));

function project(lat, lon, box, w, h) {
  const x = ((lon - box.minLon) / (box.maxLon - box.minLon)) * (w - 40) + 20;
  const y = ((box.maxLat - lat) / (box.maxLat - box.minLat)) * (h - 40) + 20;
  return [x, y];
}

function outlineBox() {
  const ring = outline.features[0].geometry.coordinates[0];
  const box = { minLon: Infinity, maxLon: -Infinity, minLat: Infinity, maxLat: -Infinity };
  for (const [lon, lat] of ring) {
    box.minLon = Math.min(box.minLon, lon); box.maxLon = Math.max(box.maxLon, lon);
    box.minLat = Math.min(box.minLat, lat); box.maxLat = Math.max(box.maxLat, lat);
  }
  return [ring, box];
}

// The closed-gate sign, drawn (no glyph, no font needed): a red plate with a white bar, amber while
// the gate moves. It sits on its own site's dot (centred on it, the level's colour a ring around it),
// so two sites side by side never leave in doubt whose gate is closed.
const gateMark = (gate) => (["closed", "closing", "opening", "moving"].includes(gate)
  ? `<g class="gate-mark ${gate === "closed" ? "closed" : "moving"}" data-testid="gate-${esc(gate)}" transform="translate(-6,-6)">
      <rect width="12" height="12" rx="2.5"></rect><rect class="bar" x="2" y="4.5" width="8" height="3"></rect></g>`
  : "");

function siteMark(s, x, y) {
  const cls = s.online ? s.level : "offline";
  const name = siteName(s.node, s.name);
  const fromRegistry = Boolean(uiConfig.names?.sites?.[s.node]?.[lang]);
  return `<g class="site-mark" data-testid="site-${esc(s.node)}" data-node="${esc(s.node)}" data-level="${esc(s.level)}" data-forecast="${esc(s.forecast ?? "")}" data-gate="${esc(s.gate ?? "")}"
      data-online="${s.online}" data-x="${x}" data-y="${y}" onclick="location.hash='#/site/${esc(s.node)}'">
    ${s.forecast ? `<circle class="forecast-ring ${esc(s.forecast)}" data-testid="forecast-ring" r="15"><title>${t("legend_forecast")}</title></circle>` : ""}
    <circle class="site ${cls} ${s.gate === "closed" ? "gate-closed" : ""}" r="${s.level === "clear" && !gateMark(s.gate) ? 7 : 11}"><title>${esc(name)}</title></circle>
    ${gateMark(s.gate)}
    <text class="label" ${fromRegistry ? "" : 'translate="no"'}>${esc(name)}</text></g>`;
}

function legend() {
  const dot = (cls, word) => `<span class="key"><svg width="16" height="16" viewBox="-8 -8 16 16"><circle class="site ${cls}" r="6"></circle></svg>${t(word)}</span>`;
  const gate = (g, word) => `<span class="key"><svg width="20" height="20" viewBox="-12 -12 24 24"><circle class="site danger ${g === "closed" ? "gate-closed" : ""}" r="11"></circle>${gateMark(g)}</svg>${t(word)}</span>`;
  return `<div class="legend" data-testid="legend"><b>${t("legend")}</b>
    ${dot("clear", "level.clear")}${dot("warning", "level.warning")}${dot("danger", "level.danger")}${dot("offline", "level.offline")}
    ${gate("closed", "legend_gate_closed")}${gate("closing", "legend_gate_moving")}
    <span class="key"><svg width="20" height="20" viewBox="-10 -10 20 20"><circle class="forecast-ring warning" r="8"></circle><circle class="site clear" r="4"></circle></svg>${t("legend_forecast")}</span></div>`;
}

function mapSvg(sites) {
  const { w, h } = MAP;
  const [ring, box] = outlineBox();
  const pts = ring.map(([lon, lat]) => project(lat, lon, box, w, h).join(",")).join(" ");
  const tiles = uiConfig.map_tiles ? tileImages(uiConfig.map_tiles, box, w, h) : "";
  const v = mapView ?? { x: 0, y: 0, w, h };
  const marks = sites.filter((s) => s.lat != null).map((s) => siteMark(s, ...project(s.lat, s.lon, box, w, h))).join("");
  return `<div class="map-tools"><button type="button" data-zoom="in" title="${t("zoom_in")}">+</button>
      <button type="button" data-zoom="out" title="${t("zoom_out")}">−</button><button type="button" data-zoom="reset">${t("map_reset")}</button></div>
    <svg class="map" id="map" viewBox="${v.x} ${v.y} ${v.w} ${v.h}" role="img" aria-label="${t("map")}">
    ${tiles}<polygon class="outline ${tiles ? "over-tiles" : ""}" points="${pts}"></polygon><g id="marks">${marks}</g></svg>${legend()}`;
}

// Marks keep their size on screen whatever the zoom and the screen's width; labels that would cover another label or
// a mark are hidden (the most urgent sites placed first), the name still in the mark's tooltip.
function layoutMap(svg) {
  const v = svg.viewBox.baseVal, k = 1 / (svg.getScreenCTM()?.a || 1);  // map units per screen pixel
  const marks = [...svg.querySelectorAll(".site-mark")];
  for (const g of marks) g.setAttribute("transform", `translate(${g.dataset.x},${g.dataset.y}) scale(${k})`);
  const rank = (g) => ({ danger: 0, warning: 1 }[g.dataset.level] ?? 2) - (g.dataset.gate === "closed" ? 0.5 : 0);
  const inView = (g) => { const x = Number(g.dataset.x), y = Number(g.dataset.y); return x >= v.x && x <= v.x + v.width && y >= v.y && y <= v.y + v.height; };
  const hits = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  // Gate plates of sites side by side are pushed apart (most urgent first, on its dot; the next away
  // from it, along the line between the two, still on its own dot), so at 390 px two closed gates
  // never read as one.
  const plates = [];
  const mid = (r) => [r.left + r.width / 2, r.top + r.height / 2];
  for (const g of [...marks].filter(inView).sort((a, b) => rank(a) - rank(b))) {
    const plate = g.querySelector(".gate-mark");
    if (!plate) continue;
    plate.setAttribute("transform", "translate(-6,-6)");
    let r = plate.getBoundingClientRect();
    const near = plates.map((o) => o.r).find((o) => hits(r, o));
    if (near) {
      const [ax, ay] = mid(r), [bx, by] = mid(near);
      const d = Math.hypot(ax - bx, ay - by), [ux, uy] = d > 0.5 ? [(ax - bx) / d, (ay - by) / d] : [0, 1];
      // Apart by a plate's width on one axis, but never off its own dot (radius 11 px).
      const push = Math.min(10, Math.max(0, (r.width + 1) / Math.max(Math.abs(ux), Math.abs(uy)) - d));
      plate.setAttribute("transform", `translate(${(ux * push - 6).toFixed(1)},${(uy * push - 6).toFixed(1)})`);
      r = plate.getBoundingClientRect();
    }
    plate.dataset.nudged = near ? "yes" : "";
    plate.classList.remove("merged");
    plate.querySelector(".plate-count")?.remove();
    const still = plates.find((o) => hits(r, o.r) && o.plate !== plate);
    if (still) {  // sites all but on one spot: one plate with their number (each dot keeps its dark ring)
      plate.classList.add("merged");
      still.n += 1;
      still.plate.querySelector(".plate-count")?.remove();
      still.plate.insertAdjacentHTML("beforeend", `<text class="plate-count" data-testid="plate-count" x="14" y="4">${still.n}</text>`);
      continue;
    }
    plates.push({ r, plate, n: 1 });
  }
  const frame = svg.getBoundingClientRect();
  const inside = (r) => r.left >= frame.left && r.right <= frame.right && r.top >= frame.top && r.bottom <= frame.bottom;
  const taken = marks.filter(inView).flatMap((g) => [...g.querySelectorAll("circle, .gate-mark")].map((m) => m.getBoundingClientRect()));
  const spots = [["start", 12, 5], ["end", -12, 5], ["middle", 0, -14], ["middle", 0, 24]];
  for (const g of [...marks].sort((a, b) => rank(a) - rank(b))) {
    const label = g.querySelector(".label");
    label.classList.remove("hidden");
    if (!inView(g)) { label.classList.add("hidden"); continue; }
    const own = g.querySelector("circle.site").getBoundingClientRect();
    const fits = spots.some(([anchor, dx, dy]) => {
      label.setAttribute("text-anchor", anchor); label.setAttribute("x", dx); label.setAttribute("y", dy);
      const r = label.getBoundingClientRect();
      return inside(r) && !taken.some((o) => o !== own && o.width && hits(r, o) && !(o.left === own.left && o.top === own.top));
    });
    if (fits) taken.push(label.getBoundingClientRect()); else label.classList.add("hidden");
  }
}

function zoomMap(svg, factor, cx, cy) {
  const v = svg.viewBox.baseVal;
  const w = Math.min(MAP.w, Math.max(MAP.w / 16, v.width * factor)), h = (w / MAP.w) * MAP.h;
  const x = cx - ((cx - v.x) / v.width) * w, y = cy - ((cy - v.y) / v.height) * h;
  mapView = { x: Math.max(0, Math.min(MAP.w - w, x)), y: Math.max(0, Math.min(MAP.h - h, y)), w, h };
  svg.setAttribute("viewBox", `${mapView.x} ${mapView.y} ${mapView.w} ${mapView.h}`);
  layoutMap(svg);
}

// The wheel zooms at the pointer, a drag pans, the buttons zoom at the centre.
function mapControls(svg) {
  const toMap = (ev) => { const p = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(svg.getScreenCTM().inverse()); return [p.x, p.y]; };
  const centre = () => { const v = svg.viewBox.baseVal; return [v.x + v.width / 2, v.y + v.height / 2]; };
  svg.addEventListener("wheel", (ev) => { ev.preventDefault(); zoomMap(svg, ev.deltaY < 0 ? 0.8 : 1.25, ...toMap(ev)); }, { passive: false });
  document.querySelectorAll("[data-zoom]").forEach((b) => {
    b.onclick = () => {
      if (b.dataset.zoom === "reset") { mapView = null; svg.setAttribute("viewBox", `0 0 ${MAP.w} ${MAP.h}`); layoutMap(svg); } else zoomMap(svg, b.dataset.zoom === "in" ? 0.5 : 2, ...centre());
    };
  });
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => { if (!ev.target.closest(".site-mark")) drag = toMap(ev); });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const [x, y] = toMap(ev), v = svg.viewBox.baseVal;
    mapView = { x: Math.max(0, Math.min(MAP.w - v.width, v.x + drag[0] - x)), y: Math.max(0, Math.min(MAP.h - v.height, v.y + drag[1] - y)), w: v.width, h: v.height };
    svg.setAttribute("viewBox", `${mapView.x} ${mapView.y} ${mapView.w} ${mapView.h}`);
  });
  const stop = () => { if (drag) { drag = null; layoutMap(svg); } };
  svg.addEventListener("pointerup", stop);
  svg.addEventListener("pointerleave", stop);
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

const exerciseBadge = (s) => (s?.exercise ? ` <span class="badge exercise" data-testid="exercise" title="${t("exercise_hint")}">${t("exercise")}</span>` : "");
const gateWord = (g) => (g ? t(`gate.${g}`) : "–");
// A close the site's agent has announced (its board warns drivers, the gate is still open), counted
// down to the time the agent gave: nothing here is guessed. The count is kept current every second.
function closingText(closesAt) {
  if (closesAt == null) return t("gate_closing_board");
  const left = closesAt - serverNow();
  return left >= 500 ? t("gate_closing_in", { n: duration(left) }) : t("gate_closing_now");
}
const closingBadge = (s) => (s?.gate_closing ? ` <span class="badge warning closing-soon" data-testid="gate-closing-soon" data-closes-at="${s.gate_closing.closes_at ?? ""}"
  title="${esc(t("gate_closing_hint"))}">${closingText(s.gate_closing.closes_at)}</span>` : "");
setInterval(() => document.querySelectorAll(".closing-soon").forEach((el) => {
  el.textContent = closingText(el.dataset.closesAt ? Number(el.dataset.closesAt) : null);
}), 1000);
const levelBadge = (s) => (s.online ? `<span class="badge ${esc(s.level)}">${t(`level.${s.level}`)}</span>` : `<span class="badge">${t("offline")}</span>`);

// A ticket opened by a forecast that no measured alert has joined yet: water expected, not seen.
const forecastTag = (k) => (k.forecast ? ` <span class="badge forecast-tag" data-testid="forecast-tag" title="${t("forecast_ticket_hint")}">${t("forecast_tag")}</span>` : "");

function ticketRows(items) {
  return items.map((k) => `<tr class="clickable" data-testid="ticket-row" data-node="${esc(k.node)}" data-forecast="${Boolean(k.forecast)}" onclick="location.hash='#/ticket/${k.id}'">
    <td><span class="badge ${k.forecast ? `forecast ${esc(k.priority)}` : badgeClass(k.priority)}">${t(`priority.${k.priority}`)}</span></td>
    <td>${esc(ticketTitle(k))}${forecastTag(k)}</td><td>${t(`state.${k.state}`)}${k.overdue ? ` <span class="badge danger">${t("overdue")}</span>` : ""}</td>
    <td class="wide">${esc(unitName(k.unit))}</td><td class="muted wide">${when(k.created_ms)}</td></tr>`).join("");
}

// Who raised an alert: the site's device, or for a forecast the collector's rainfall model.
const alertSource = (node, kind, dev) => (vocab.alert_kinds[kind] && !vocab.alert_kinds[kind].observed ? t("forecast_model") : devName(node, dev));

const AT_RISK_H = 3;  // the overview's "sites at risk in the next hours"

// A measured water alert is a filled badge of its level; a forecast one an outlined badge (water
// expected, not there: it never closes a gate); a fault grey-violet.
function alertBadge(a) {
  const kind = vocab.alert_kinds[a.kind];
  if (kind?.water && !kind.observed) return `<span class="badge forecast ${esc(a.level)}" title="${t("forecast_hint")}">${t(`level.${a.level}`)}</span>`;
  return `<span class="badge ${kind?.water ? esc(a.level) : "fault"}">${t(`level.${a.level}`)}</span>`;
}

// The sites the forecast expects to cross warning or danger within the next hours, soonest first.
function atRiskCard(risk, given) {
  const title = `<h2>${t("at_risk", { h: AT_RISK_H })}${risk ? ` (${risk.items.length})` : ""}</h2>`;
  if (!risk) return `<section class="card" data-testid="at-risk">${title}<p class="muted">${t("fc.unavailable")}</p></section>`;
  if (risk.status === "no_forecasts") {  // an empty list would read as all clear: say why there is none
    const why = ["no_model", "no_rain", "stale"].filter((k) => risk[k] > 0).map((k) => t(`fc.n_${k}`, { n: risk[k] })).join(comma());
    return `<section class="card" data-testid="at-risk" data-status="no_forecasts">${title}<p class="muted" data-testid="at-risk-none-running">${t("fc.not_running", { why })}</p></section>`;
  }
  const items = [...risk.items].sort((a, b) => a.eta_s - b.eta_s);
  // The counts, always: how many sites are at risk, how many the forecast covers, and why the others not.
  const counts = [t("fc.n_at_risk", { n: items.length }), ...["forecasting", "no_model", "no_rain", "stale"]
    .filter((k) => k === "forecasting" || risk[k] > 0).map((k) => t(`fc.n_${k}`, { n: risk[k] ?? 0 }))].join(" · ");
  const rows = items.map((r) => { const at = Date.parse(r.at); return `<tr class="clickable" data-testid="at-risk-row" data-node="${esc(r.site_id)}" data-eta="${r.eta_s}" data-at="${at}" data-issued="${Date.parse(r.issued_at)}"
      onclick="location.hash='#/site/${esc(r.site_id)}'"><td><span class="badge forecast ${esc(r.level)}">${t(`level.${r.level}`)}</span></td>
      <td>${siteNameHtml(r.site_id, given[r.site_id] ?? r.name)}</td><td data-testid="at-risk-eta">${t("in", { n: duration(at - serverNow()) })} <span class="muted">(${when(at)})</span></td>
      <td title="${t("probability")}">${pct(r.probability)}</td><td class="wide" title="${t("peak_forecast")}">${mm(r.peak_mm)}</td></tr>`; }).join("");
  const issued = risk.issued_at ? ` · <span data-testid="at-risk-issued" data-issued="${Date.parse(risk.issued_at)}">${t("fc.of", { when: when(Date.parse(risk.issued_at)) })}</span>` : "";
  return `<section class="card" data-testid="at-risk" title="${t("forecast_hint")}">${title}
    <p class="muted"><span data-testid="at-risk-counts">${counts}</span>${issued}</p>
    ${items.length ? `<table><tr><th>${t("level")}</th><th>${t("site")}</th><th>${t("eta")}</th><th>${t("probability")}</th><th class="wide">${t("peak_forecast")}</th></tr>${rows}</table>` : `<p class="muted">${t("none")}</p>`}</section>`;
}

async function renderOverview() {
  const seq = routeSeq;
  const [sites, alerts, tickets, risk] = await Promise.all([
    api("/api/v1/sites"),
    api("/api/v1/alerts?active=true&limit=100"),
    api(`/api/v1/tickets?${vocab.active_states.map((s) => `state=${s}`).join("&")}&limit=100`),
    api(`/api/v1/forecast/at-risk?hours=${AT_RISK_H}`).catch((e) => {
      if (e.message === "401") throw e;
      return null;  // no forecasts on this collector (yet): the list says so
    }),
  ]);
  await learnDevices(alerts.items.map((a) => a.node));
  const given = Object.fromEntries(sites.map((s) => [s.node, s.name]));
  mapSites = sites;
  if (seq !== routeSeq) return;  // the user went elsewhere meanwhile: draw nothing
  $main().innerHTML = `<div class="grid">
    <section class="card"><h2>${t("map")}</h2>${mapSvg(sites)}
      <div class="scroll"><table><tr><th>${t("site")}</th><th>${t("level")}</th><th>${t("gate")}</th><th class="wide">${t("board")}</th></tr>
      ${sites.map((s) => `<tr class="clickable" data-testid="site-row" data-node="${esc(s.node)}" onclick="location.hash='#/site/${esc(s.node)}'"><td>${siteNameHtml(s.node, s.name)}${exerciseBadge(s)}</td>
        <td>${levelBadge(s)}</td><td data-testid="site-row-gate">${gateWord(s.gate)}${closingBadge(s)}</td><td class="wide">${s.sign ? raw(s.sign) : ""}</td></tr>`).join("")}</table></div></section>
    <div>
      ${atRiskCard(risk, given)}
      <section class="card" style="margin-top:16px"><h2>${t("alerts")} (${alerts.total})</h2><table>
        ${alerts.items.map((a) => `<tr data-testid="alert-row" data-kind="${esc(a.kind)}"><td>${alertBadge(a)}</td>
          <td>${siteNameHtml(a.node, given[a.node])}</td><td>${t(`alert.${a.kind}`)} · ${alertSource(a.node, a.kind, a.dev)}</td><td class="muted">${when(a.last_ts)}</td></tr>`).join("")}</table></section>
      <section class="card" style="margin-top:16px"><h2>${t("tickets")} (${tickets.total})</h2><table>${ticketRows(tickets.items)}</table></section>
    </div></div>`;
  const svg = document.getElementById("map");
  layoutMap(svg);
  mapControls(svg);
}

async function renderTickets() {
  const seq = routeSeq;
  const state = new URLSearchParams(location.hash.split("?")[1] || "").get("state") || "";
  const q = state ? `state=${state}` : "";
  const tickets = await api(`/api/v1/tickets?${q}&limit=200`);
  const states = ["", ...vocab.states];
  if (seq !== routeSeq) return;  // the user went elsewhere meanwhile: draw nothing
  $main().innerHTML = `<section class="card"><h2>${t("tickets")} (${tickets.total})</h2>
    <div class="form-row"><label>${t("state")}</label><select id="state-filter">${states.map((s) => `<option value="${s}" ${s === state ? "selected" : ""}>${s ? t(`state.${s}`) : t("all")}</option>`).join("")}</select></div>
    <table><tr><th>${t("priority")}</th><th></th><th>${t("state")}</th><th class="wide">${t("unit")}</th><th class="wide">${t("created")}</th></tr>${ticketRows(tickets.items)}</table></section>`;
  document.getElementById("state-filter").onchange = (ev) => { location.hash = `#/tickets?state=${ev.target.value}`; };
}

// --------------------------------------------------------------- ticket

// Who an escalation went to: a unit by its name, or a unit's leader (by name in Chinese,
// as "the leader of <unit>" in English: the registry names leaders in Chinese only).
function escalatedTo(d) {
  if (uiConfig.names?.units?.[d.to]) return esc(unitName(d.to));
  if (d.to_unit && d.to_unit !== d.to) return t("sys.leader_of", { name: raw(d.to), unit: esc(unitName(d.to_unit)) });
  return raw(d.to);
}

// What a system entry says, in the UI's language: from its detail's code and parameters
// (cloud/tickets/service.py TIMELINE_CODES); entries written before the codes, from their English note.
const SYSTEM_CODES = {
  routed: (d) => t("sys.routed", { unit: esc(unitName(d.routed_to)) }),
  auto_dispatch: () => t("sys.auto_dispatch"),
  rejected_to_fallback: (d) => t("sys.rejected_to", { unit: esc(unitName(d.rejected_by)) }),
  priority: (d) => t("sys.priority", { a: t(`priority.${d.from}`), b: t(`priority.${d.to}`) }),
  water_gone: () => t("sys.water_gone"),
  water_back: () => t("sys.back"),
  escalated: (d) => t("sys.escalated", { deadline: t(`deadline.${d.deadline}`), level: d.level, to: escalatedTo(d) }),
  forecast_deadline: (d) => t("sys.forecast_deadline", { expected: when(d.expected_ms), due: when(d.dispatch_due_ms) }),
  measured: (d, e) => t("sys.measured", { dev: alertSource(e.node, d.kind, d.dev), level: t(`level.${d.level}`) })
    + (d.expected_ms ? t("sys.measured_vs", { when: when(d.expected_ms) }) : ""),
};

// An alert transition in words: the device, the change and its value; a forecast, what it expects.
function transitionNote(e, d, n) {
  // An immersion contact's raw value is 1 (wet) or 0 (dry): said in words, not "(1)"/"(0)".
  const kind = devKinds[e.node]?.[d.dev];
  const value = d.value == null ? "" : kind === "immersion" ? ` (${t(d.value ? "wet" : "dry")})`
    : ` (${kind === "level" || d.value > 1 ? mm(d.value) : num(d.value)})`;
  const late = d.late || /arrived after/.test(n);
  const change = `${t(`level.${d.prev}`)} → ${t(`level.${d.level}`)}`;
  if (e.kind && vocab.alert_kinds[e.kind] && !vocab.alert_kinds[e.kind].observed) {
    // A forecast: what it expects (the peak, when the level is crossed), not a reading.
    const expect = d.level === "clear" ? [] : [d.value != null ? t("fc.peak", { peak: mm(d.value) }) : "",
      d.eta_s != null ? t("fc.expected", { when: when(d.ts + d.eta_s * 1000) }) : ""].filter(Boolean);
    return `<span data-testid="forecast-entry">${t("alert.forecast")} ${change}${expect.length ? ` (${expect.join(comma())})` : ""}</span>`;
  }
  return `${devName(e.node, d.dev)} ${change}${value}${late ? ` ${t("sys.late")}` : ""}`;
}

function systemNote(e) {
  const d = e.detail ?? {}, n = e.note ?? "";
  // The entry that opened the ticket carries the transition that did: what happened, then the routing.
  if (d.code === "routed" && d.level && d.prev) return `${transitionNote(e, d, n)} · ${SYSTEM_CODES.routed(d, e)}`;
  if (SYSTEM_CODES[d.code]) return SYSTEM_CODES[d.code](d, e);
  if (e.action === "escalate" && d.level != null) return SYSTEM_CODES.escalated(d);
  if (d.level && d.prev) return transitionNote(e, d, n);
  // Entries from before the codes: their English notes, recognised.
  let m;
  if (e.action === "open" && d.routed_to) return t("sys.routed", { unit: esc(unitName(d.routed_to)) });
  if (n === "auto-dispatch rule") return t("sys.auto_dispatch");
  if (n === "the sensor shows the water gone") return t("sys.water_gone");
  if ((m = n.match(/^priority (\w+) → (\w+)$/))) return t("sys.priority", { a: t(`priority.${m[1]}`), b: t(`priority.${m[2]}`) });
  if ((m = n.match(/^rejected by (\S+): to the fallback unit$/))) return t("sys.rejected_to", { unit: esc(unitName(m[1])) });
  if (n.startsWith("the water is back")) return t("sys.back");
  return n ? raw(n) : "";
}

// When entries share a minute, every entry shows its seconds (else a flap reads as out of order,
// and one precision reads more easily than a mix).
// An alert transition shows when it happened at the edge; when it was received more than 30 s
// later (a backlog after an outage), the receipt too: the water did not come late, the message did.
const LATE_MS = 30_000;
function timelineEntry(e, i, all) {
  const at = (x) => x.happened_ms ?? x.ts;
  const minute = (x) => Math.floor(at(x) / 60_000);
  // One precision for the whole timeline: seconds on every entry when any two share a minute.
  const seconds = new Set(all.map(minute)).size < all.length;
  const got = e.received_ms ?? e.ts;
  const received = got - at(e) > LATE_MS
    ? ` <span class="received" data-testid="received-late" data-received="${got}">(${t("received_late", { when: got - at(e) < 12 * 3600_000 ? clockTime(got) : when(got), late: duration(got - at(e)) })})</span>` : "";
  const note = e.actor === "system" ? systemNote(e) : (e.note ? raw(e.note) : "");
  const score = e.detail?.score != null ? ` <span class="score" data-testid="timeline-score">${t("score")} ${"★".repeat(e.detail.score)}${"☆".repeat(5 - e.detail.score)} ${e.detail.score}/5</span>` : "";
  const unit = e.detail?.unit ? ` → ${esc(unitName(e.detail.unit))}` : "";
  const wet = e.detail?.confirmed_while_wet ? ` <span class="badge warning" data-testid="confirmed-wet">${t("confirmed_wet")}</span>` : "";
  return `<li data-testid="timeline-entry" data-entry="${esc(e.action)}" data-happened="${at(e)}"><span class="ts" data-testid="timeline-ts">${when(at(e), seconds)}${received}</span>
    <b>${t(`action.${e.action}`)}</b> · ${actorName(e.actor)}${unit} ${e.to_state ? `→ ${t(`state.${e.to_state}`)}` : ""}${score}${wet} <span class="muted">${note}</span></li>`;
}

// The deadline that runs now (accepting, then handling), its time left, and the escalation level.
function deadlineBlock(k) {
  const [due, which] = { open: [k.dispatch_due_ms, "dispatch_due"], dispatched: [k.accept_due_ms, "accept_due"],
    accepted: [k.handle_due_ms, "handle_due"] }[k.state] ?? [null, ""];
  const rung = vocab.ladder.find((r) => r.level === k.escalation);
  const left = due == null ? "" : due >= serverNow()
    ? `<span data-testid="time-left">${t("time_left")} ${duration(due - serverNow())}</span>`
    : `<span data-testid="time-left" class="error">${t("late_by")} ${duration(serverNow() - due)}</span>`;
  return `<p class="deadline" data-testid="deadline" data-due="${due ?? ""}">
    ${due != null ? `${t(which)}${colon()}<b>${when(due)}</b> · ${left} · ` : ""}
    <span data-testid="escalation" data-level="${k.escalation}">${t("escalation")}${colon()}${k.escalation
      ? `<span class="badge danger">${k.escalation}</span> ${t(`ladder.${rung?.to ?? "supervision"}`)}` : t("escalation_none")}</span></p>`;
}

// What the ticket's forecast expects: the level, when it is crossed and how likely, the peak.
function predictionBlock(p) {
  if (!p) return "";
  const cross = p.expected_ms ? t("fc.cross", { when: when(p.expected_ms), level: t(`level.${p.level}`), p: pct(p.probability) }) : "";
  const parts = [cross, p.peak != null ? t("fc.peak", { peak: mm(p.peak) }) : "", `<span class="muted" data-testid="prediction-issued">${t("fc.of", { when: when(p.issued_ms) })}</span>`];
  return `<p class="prediction${p.active ? "" : " off"}" data-testid="prediction" data-active="${p.active}" data-expected="${p.expected_ms ?? ""}" data-issued="${p.issued_ms}" data-source="${esc(p.source ?? "")}" title="${t("forecast_hint")}">
    <b>${t("prediction")}</b>: ${parts.filter(Boolean).join(" · ")}${p.active ? "" : ` <span class="muted" data-testid="prediction-off">${t("fc.off")}</span>`}</p>`;
}

async function renderTicket(id) {
  const seq = routeSeq;
  const k = await api(`/api/v1/tickets/${id}`);
  await learnDevices([k.node]);
  const actions = k.allowed_actions;
  const kindOf = Object.fromEntries(k.alerts.map((a) => [a.id, a.kind]));
  for (const e of k.timeline) { e.node = k.node; e.kind = kindOf[e.detail?.alert_id]; }
  if (seq !== routeSeq) return;  // the user went elsewhere meanwhile: draw nothing
  $main().innerHTML = `<section class="card" data-testid="ticket" data-state="${esc(k.state)}">
    <p><a href="#/">← ${t("back")}</a></p>
    <h2 data-testid="ticket-title">${esc(ticketTitle(k))} <span class="badge ${k.forecast ? `forecast ${esc(k.priority)}` : badgeClass(k.priority)}">${t(`priority.${k.priority}`)}</span>${forecastTag(k)}</h2>
    <p>${t("state")}${colon()}<b data-testid="ticket-state">${t(`state.${k.state}`)}</b> · ${t("unit")}${colon()}<span data-testid="ticket-unit">${esc(unitName(k.unit))}</span>
      · ${t("kind")}${colon()}<span data-testid="ticket-kind">${t(k.forecast ? "alert.forecast" : `alert.${k.kind}`)}</span> ${k.overdue ? `<span class="badge danger">${t("overdue")}</span>` : ""}
      · <a href="#/site/${esc(k.node)}">${siteNameHtml(k.node, null)}</a></p>
    ${predictionBlock(k.prediction)}
    ${deadlineBlock(k)}
    ${actions.length ? `<div class="card"><div class="form-row"><textarea id="note" placeholder="${t("note")}"></textarea></div>
      ${actions.includes("evaluate") ? `<div class="form-row"><label>${t("score")}</label><select id="score"><option></option>${[5, 4, 3, 2, 1].map((n) => `<option>${n}</option>`).join("")}</select></div>` : ""}
      ${actions.includes("merge") ? `<div class="form-row"><label>${t("of_ticket")}</label><input id="of" size="28"></div>` : ""}
      <div class="actions" data-testid="actions">${actions.map((a) => `<button type="button" data-action="${a}" class="${a === "dispatch" || a === "accept" ? "primary" : ""}">${t(`action.${a}`)}</button>`).join("")}</div>
      <p class="error" id="action-error" data-testid="action-error">${actionErrors[id] ?? ""}</p></div>` : ""}
    <h2>${t("timeline")}</h2><ul class="timeline">${k.timeline.map(timelineEntry).join("")}</ul>
  </section>`;
  // Only the action buttons act: a timeline entry names an action done, and a click on it must send nothing.
  document.querySelectorAll('[data-testid="actions"] button[data-action]').forEach((b) => {
    b.onclick = async () => {
      delete actionErrors[id];
      document.getElementById("action-error").textContent = "";
      const body = {};
      const note = document.getElementById("note").value.trim();
      // An action the vocabulary gives a required note: said before anything is sent.
      if (!note && vocab.actions[b.dataset.action]?.note) {
        actionErrors[id] = `<span data-testid="note-required">${esc(t("note_required", { action: t(`action.${b.dataset.action}`) }))}</span>`;
        document.getElementById("action-error").innerHTML = actionErrors[id];
        document.getElementById("note").focus();
        return;
      }
      const score = document.getElementById("score")?.value;
      const of = document.getElementById("of")?.value.trim();
      if (note) body.note = note;
      if (score && b.dataset.action === "evaluate") body.score = Number(score);
      if (of && b.dataset.action === "merge") body.of = of;
      const send = () => api(`/api/v1/tickets/${id}/${b.dataset.action}`, { method: "POST", body: JSON.stringify(body) });
      // The drafts as sent. The answer may come after a live redraw and after more was written
      // (the live event of the change can beat its own answer): what was written since stays.
      const hash = location.hash;
      const sent = Object.fromEntries(["note", "score", "of"].map((f) => [f, drafts[`${hash}|${f}`]]));
      try {
        try {
          await send();
        } catch (e) {
          // Verifying while the site still reads water: only when the dispatcher says so.
          if (!(e instanceof ApiError && e.code === "still_wet" && confirm(t("confirm_wet")))) throw e;
          body.confirm = true;
          await send();
        }
        for (const [f, v] of Object.entries(sent)) if (drafts[`${hash}|${f}`] === v) delete drafts[`${hash}|${f}`];
        route();  // drawn again as a live redraw is: the drafts kept, whatever page is shown now
      } catch (e) {
        actionErrors[id] = errorHtml(e);
        const out = document.getElementById("action-error");  // the page may have been redrawn
        if (out) out.innerHTML = actionErrors[id];
      }
    };
  });
}

// ----------------------------------------------------------------- site

const CHART = { w: 760, h: 250, pad: 36 };  // w: set to the page's width when a site is drawn

function clockLabel(ms, span) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-GB", { timeZone: tz(), month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).formatToParts(new Date(ms)).map((p) => [p.type, p.value]));
  const hm = `${parts.hour}:${parts.minute}`;
  return span > 86400e3 ? `${parts.month}-${parts.day} ${hm}` : hm;
}

const pct = (v) => (v == null ? "–" : `${num(v * 100, v > 0 && v < 0.1 ? 1 : 0)}%`);

// What the forecast says under the chart: which round's it is, when the site is expected to cross
// which level, how likely, the peak; what the band is and how wide; what the rainfall forecast and
// the model are, the model's fit error with the history it was measured on (a small error on a
// short history is no precision); or why there is no forecast (in words, the collector's words as
// a tooltip). The same stored forecast as the at-risk list and a ticket's prediction.
const FEW_EVENTS = 10;  // fewer rain events fitted than this: the fit error says little
function forecastNote(f) {
  const head = `<b>${t("forecast")}</b>`;
  if (f.status !== "ok") {
    const why = I18N[lang][`fc.${f.status}`] !== undefined ? t(`fc.${f.status}`) : t("fc.unavailable");
    // The reason in words, no raw status code; in English the collector's own words as its tooltip.
    const detail = f.detail && lang === "en" ? ` title="${esc(f.detail)}"` : "";
    return `<p class="forecast-note muted" data-testid="forecast" data-status="${esc(f.status)}">${head} · <span data-testid="forecast-detail"${detail}>${why}</span></p>`;
  }
  const issued = Date.parse(f.issued_at);
  const crossings = (f.crossing ?? []).filter((c) => c.at).map((c) => {
    const at = Date.parse(c.at);
    return `<span data-testid="forecast-crossing" data-level="${esc(c.level)}" data-at="${at}">${t("fc.cross", { when: `${t("in", { n: duration(at - serverNow()) })} (${when(at)})`,
      level: `<span class="badge forecast ${esc(c.level)}">${t(`level.${c.level}`)}</span>`, p: pct(c.probability) })}</span>`;
  });
  const hours = f.steps.length ? duration(Date.parse(f.steps[f.steps.length - 1].t) - serverNow()) : "";
  const said = crossings.length ? crossings.join(lang === "zh" ? "；" : "; ") : t("fc.quiet", { h: hours });
  // The band at its peak (the step of the highest median), and its own width there.
  const top = f.steps.reduce((a, p) => (a && a.p50 >= p.p50 ? a : p), null);
  const band = top ? `<span data-testid="forecast-band-note" data-width="${num(top.p90 - top.p10)}">${t("fc.band", { lo: num(top.p10), hi: mm(top.p90), w: mm(top.p90 - top.p10) })}</span>` : "";
  const rain = f.rain_issued_at ? `<span data-testid="forecast-rain">${t("fc.rain", { source: raw(f.rain_source ?? ""), when: when(Date.parse(f.rain_issued_at)) })}</span>` : "";
  const fit = f.fit;
  const span = fit ? Date.parse(fit.span_to) - Date.parse(fit.span_from) : 0;
  const fitted = fit ? `<span data-testid="forecast-fit" data-rmse="${fit.rmse_mm}" data-span-ms="${span}" data-n="${fit.n}" data-events="${fit.events}">${t("fc.fit",
    { span: duration(span), events: num(fit.events), n: num(fit.n), rmse: mm(fit.rmse_mm) })}</span>${fit.events < FEW_EVENTS
    ? ` <span class="badge warning" data-testid="forecast-little-history">${t("fc.little", { events: num(fit.events) })}</span>` : ""}` : "";
  const sep = lang === "zh" ? "；" : "; ";
  return `<p class="forecast-note" data-testid="forecast" data-status="ok" data-issued="${issued}" title="${t("forecast_hint")}"><b data-testid="forecast-issued">${t("fc.head", { when: when(issued) })}</b>
    · ${said} · ${t("fc.peak", { peak: mm(f.peak_mm) })}
    ${band ? `<br><span class="muted">${band}</span>` : ""}${rain || fitted ? `<br><span class="muted">${[rain, fitted].filter(Boolean).join(sep)}</span>` : ""}</p>`;
}

// The depth over [from, to] with the thresholds drawn; drag across it to zoom in. Buckets are
// drawn as their min–max band with the maximum as the line (an average hides a flood's peak).
// ``forecast``: steps after ``now`` drawn as their p10–p90 band and p50 line, apart from what was measured.
// The smallest 1, 2 or 5 x 10^n (at least 1) not under ``raw``.
function roundStep(raw) {
  const p = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
  return [1, 2, 5, 10].map((m) => m * p).find((v) => v >= raw) ?? 10 * p;
}

function chartSvg(points, thresholds, from, to, forecast = [], now = null) {
  const { w, h, pad } = CHART;
  const top = (p) => p.max ?? p.value, bottom = (p) => p.min ?? p.value;
  const th = [thresholds?.warning, thresholds?.danger].filter((v) => v != null);
  const peak = points.length ? Math.max(...points.map(top)) : null;
  // The axis runs between round ticks (1, 2 or 5 x 10^n apart, at most five steps), not 111/223/334.
  const hiY = Math.max(peak ?? 0, ...forecast.map((p) => p.p90), ...th, 10) * 1.1, loY = Math.min(0, ...points.map(bottom));
  const step = roundStep((hiY - loY) / 5), minY = Math.floor(loY / step) * step, maxY = Math.ceil(hiY / step) * step;
  const X = (v) => pad + ((v - from) / (to - from)) * (w - 2 * pad);
  const Y = (v) => h - pad + 10 - ((v - minY) / (maxY - minY)) * (h - 2 * pad);
  const line = (f) => points.map((p, i) => `${i ? "L" : "M"}${X(p.ts).toFixed(1)},${Y(f(p)).toFixed(1)}`).join(" ");
  const buckets = points.length && points[0].max != null;
  const band = buckets ? `<path class="band" data-testid="band" d="${line(top)} ${[...points].reverse().map((p) => `L${X(p.ts).toFixed(1)},${Y(bottom(p)).toFixed(1)}`).join(" ")} Z"><title>${t("band")}</title></path>` : "";
  const lines = ["warning", "danger"].filter((k) => thresholds?.[k] != null).map((k) =>
    `<line class="threshold ${k}" data-testid="threshold-${k}" x1="${pad}" x2="${w - pad}" y1="${Y(thresholds[k])}" y2="${Y(thresholds[k])}"></line>
     <text x="${w - pad - 80}" y="${Y(thresholds[k]) - 4}">${t(`level.${k}`)} ${mm(thresholds[k])}</text>`).join("");
  const yTicks = Array.from({ length: Math.round((maxY - minY) / step) + 1 }, (_, i) => minY + i * step).map((v) =>
    `<line class="grid-line" x1="${pad}" x2="${w - pad}" y1="${Y(v)}" y2="${Y(v)}"></line><text class="y-tick" data-testid="y-tick" x="2" y="${Y(v) + 4}">${v.toFixed(0)}</text>`).join("");
  const xTicks = [0, 0.25, 0.5, 0.75, 1].map((f) => { const v = from + f * (to - from); return `<text class="x-tick" data-ts="${Math.round(v)}" x="${X(v)}" y="${h - 4}" text-anchor="middle">${clockLabel(v, to - from)}</text>`; }).join("");
  const empty = points.length || forecast.length ? "" : `<text x="${w / 2}" y="${h / 2}" text-anchor="middle" class="muted">${t("none")}</text>`;
  const fx = (p) => X(p.ts).toFixed(1), fy = (v) => Y(v).toFixed(1);
  const ahead = forecast.length ? `<g data-testid="forecast-chart" data-steps="${forecast.length}">
      <path class="forecast-band" data-testid="forecast-band" d="${forecast.map((p, i) => `${i ? "L" : "M"}${fx(p)},${fy(p.p90)}`).join(" ")} ${[...forecast].reverse().map((p) => `L${fx(p)},${fy(p.p10)}`).join(" ")} Z"><title>${t("forecast_band")}</title></path>
      <path class="forecast-p50" data-testid="forecast-p50" d="${forecast.map((p, i) => `${i ? "L" : "M"}${fx(p)},${fy(p.p50)}`).join(" ")}"><title>${t("forecast_median")}</title></path></g>` : "";
  const nowLine = now != null && now >= from && now <= to ? `<line class="now" data-testid="now" x1="${X(now)}" x2="${X(now)}" y1="${pad - 16}" y2="${h - pad + 10}"></line>
    <text x="${X(now) + 3}" y="${pad - 6}">${t("now")}</text>` : "";
  return `<svg class="chart" viewBox="0 0 ${w} ${h}" data-testid="chart" data-from="${from}" data-to="${to}" data-points="${points.length}" data-peak="${peak ?? ""}">
    ${yTicks}${xTicks}${lines}${band}<path class="series" data-testid="series" d="${line(top)}"><title>${t(buckets ? "max" : "depth")}</title></path>${ahead}${nowLine}${empty}
    <text x="${pad}" y="12">${t("depth")} (${t("mm")})${buckets ? ` · ${t("max")} / ${t("band")}` : ""}</text>
    <rect class="zoom-sel" x="0" y="${pad - 26}" width="0" height="${h - 2 * pad + 16}" hidden></rect></svg>`;
}

// Drag across the chart (mouse, pen or finger) to look at that stretch of time. The pointer is
// mapped through the drawing's own transform: however wide the screen, the stretch under it.
function zoomable(svg, onZoom) {
  const { w, pad } = CHART, sel = svg.querySelector(".zoom-sel");
  const from = Number(svg.dataset.from), to = Number(svg.dataset.to);
  const toX = (ev) => {
    const p = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(svg.getScreenCTM().inverse());
    return Math.max(pad, Math.min(w - pad, p.x));
  };
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

// A device's health in words: its bus state, its fault, when it last answered.
// Its counters are the agent's totals since it started, as of its last health report (``uptime_s``
// then): a minute into a run the birth's "1 request" is no error, only early.
function healthCells(h, goodReading, uptimeS) {
  const good = Math.max(h?.last_good_ms ?? 0, goodReading ?? 0) || null;
  const lastGood = `<abbr title="${t("last_good_hint")}">${t("last_good")}</abbr>${colon()}<span data-testid="last-good" data-ms="${good ?? ""}">${ago(good)}</span>`;
  if (!h || !h.state) return `<td data-testid="device-health">–</td><td class="muted">${good ? lastGood : ""}</td>`;
  const cls = h.fault || h.state !== "ok" ? "badge danger" : "badge clear";
  const fault = h.fault ? ` · ${t("fault_reason")}${colon()}${raw(h.fault)}` : "";
  const count = (n, one, many) => `${num(n ?? 0)} ${t(n === 1 ? one : many)}`;
  // In Chinese the note's full-width brackets need no space before them.
  const since = uptimeS != null && uptimeS >= 1 ? `${lang === "zh" ? "" : " "}${t("since_start", { d: duration(uptimeS * 1000) })}` : "";
  return `<td data-testid="device-health"><span class="${cls}">${t(`health.${h.state}`)}</span>${fault}</td>
    <td class="muted">${lastGood} · <span data-testid="device-counts">${[count(h.requests, "request", "requests"), count(h.timeouts, "timeout", "timeouts"), count(h.errors, "error", "errors")].join(comma())}${since}</span></td>`;
}

// The edge's refusals of a person's gate or board command (edge/rules/gate.py judge), in Chinese:
// what to do next matters most to the operator, so the detail is translated, not only the code.
const WHY_ZH = [
  [/^the board shows no warning; drivers must be warned for ([\d.]+) s before the gate closes: put a warning on the board first, then close the gate ([\d.]+) s later$/,
    (m) => `情报板未显示警示；道闸关闭前须先警示驾驶员 ${m[1]} 秒：请先发布情报板警示，${m[2]} 秒后再关闭道闸`],
  [/^the board shows no warning; put a warning on the board first, then close the gate$/, () => "情报板未显示警示：请先发布情报板警示，再关闭道闸"],
  [/^the board has warned drivers for (\d+) s of the ([\d.]+) s needed before the gate closes: close the gate again in (\d+) s$/,
    (m) => `情报板已警示驾驶员 ${m[1]} 秒，道闸关闭前须警示 ${m[2]} 秒：请 ${m[3]} 秒后再关闭道闸`],
  // As older agents said it.
  [/^the board has warned for (\d+) s, ([\d.]+) s needed; send sign\.show first$/, (m) => `情报板已警示 ${m[1]} 秒，需 ${m[2]} 秒；请先发布情报板警示`],
  [/^(.*); opening anyway needs a force with a reason$/, (m) => `${m[1]}；强制开闸须注明理由`],
  [/^water level is (\w+); the board must warn$/, (m) => `水位为${I18N.zh[`level.${m[1]}`] ?? m[1]}；情报板须保持警示`],
  [/^the gate is closed; the board must say so$/, () => "道闸关闭中；情报板须保持提示"],
];

function whyDetail(rest) {
  if (!rest) return "";
  // The button as the UI names it, not the command's wire name.
  if (lang === "en") {
    const said = rest.replace(/send sign\.show first$/, `press "${t("show_message")}" first`)
      .replace(/put a warning on the board first/, `put a warning on the board first ("${t("show_message")}")`);
    return ` <span class="muted" data-testid="cmd-detail">(${esc(said)})</span>`;
  }
  for (const [re, zh] of WHY_ZH) {
    const m = rest.match(re);
    if (m) return ` <span class="muted" data-testid="cmd-detail">（${esc(zh(m))}）</span>`;
  }
  return ` <span class="muted" data-testid="cmd-detail" translate="no">(${esc(rest)})</span>`;  // the edge's words as sent
}

// A command's result: its status, the edge's reason code in words, and the detail (what to do next).
function commandResult(c) {
  const [code, ...rest] = String(c.result_reason ?? "").split(": ");
  const why = c.result_reason ? ` · <span title="${esc(c.result_reason)}">${I18N[lang][`why.${code}`] !== undefined ? t(`why.${code}`) : raw(code)}</span>` : "";
  return `<span data-testid="cmd-status" data-status="${esc(c.status)}" data-why="${esc(c.result_reason ? code : "")}">${t(`cmd.${c.status}`)}${why}${whyDetail(rest.join(": "))}</span>`;
}

async function renderSite(node) {
  const seq = routeSeq;
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const range = Number(params.get("h") || 1);
  const zoomed = params.has("from") && params.has("to");
  const to = zoomed ? Number(params.get("to")) : serverNow();
  const from = zoomed ? Number(params.get("from")) : to - range * 3600e3;
  const span = to - from;
  const [[site], info, latest, forecast] = await Promise.all([
    api("/api/v1/sites").then((all) => all.filter((s) => s.node === node)),
    api(`/api/v1/nodes/${node}`),
    api(`/api/v1/readings/latest?node=${encodeURIComponent(node)}`),
    api(`/api/v1/sites/${encodeURIComponent(node)}/forecast`).catch((e) => {
      if (e.message === "401") throw e;
      return { status: "unavailable", detail: e.message, steps: [], crossing: [] };
    }),
  ]);
  // The forecast band after now: the chart runs on to its last step (unless zoomed into the past).
  const steps = forecast.status === "ok" ? forecast.steps.map((p) => ({ ts: Date.parse(p.t), p10: p.p10, p50: p.p50, p90: p.p90 })) : [];
  const ahead = !zoomed && steps.length ? Math.max(to, steps[steps.length - 1].ts) : to;
  // A device's last good read: its newest good reading, or what the last heartbeat said if later
  // (the heartbeat's health alone lags the readings by up to a heartbeat).
  const goodAt = {};
  for (const r of latest) if (r.quality === "good") goodAt[r.dev] = Math.max(goodAt[r.dev] ?? 0, r.ts);
  devKinds[node] = Object.fromEntries(info.devices.map((d) => [d.dev, d.kind]));
  const level = info.devices.find((d) => d.kind === "level");
  const res = span <= 2 * 3600e3 ? 0 : span <= 48 * 3600e3 ? 60 : 600;
  const hist = level ? await api(`/api/v1/readings?node=${node}&dev=${level.dev}&from=${from}&to=${to}&resolution=${res}&limit=5000`) : { points: [] };
  const canCommand = COMMAND_ROLES.includes(me.role);
  CHART.w = Math.max(320, Math.min(1600, $main().clientWidth - 60));  // as wide as the page: no letterbox
  const sign = info.devices.find((d) => d.kind === "sign"), gate = info.devices.find((d) => d.kind === "gate");
  const open = (site?.tickets ?? []).map((k) => `<a href="#/ticket/${esc(k.id)}" data-testid="site-ticket"><span class="badge ${badgeClass(k.priority)}">${t(`priority.${k.priority}`)}</span>
    ${esc(ticketTitle(k))}${forecastTag(k)} · ${t(`state.${k.state}`)}</a>`).join(" ");
  if (seq !== routeSeq) return;  // the user went elsewhere meanwhile: draw nothing
  $main().innerHTML = `<section class="card" data-testid="site-page" data-gate="${esc(site?.gate ?? "")}">
    <p><a href="#/">← ${t("back")}</a></p>
    <h2>${siteNameHtml(node, site?.name)} <span class="badge ${esc(site?.level ?? "clear")}" data-testid="site-level">${t(`level.${site?.level ?? "clear"}`)}</span>${exerciseBadge(site)}</h2>
    <p>${addressHtml(node, site?.address)}${site?.online ? t("online") : t("offline")} · <abbr title="${t("last_seen_hint")}">${t("last_seen")}</abbr>${colon()}<span data-testid="last-seen" data-ms="${info.last_seen_ms ?? ""}">${ago(info.last_seen_ms)}</span>
      · ${t("gate")}${colon()}<b data-testid="gate-state">${gateWord(site?.gate)}</b>${site?.gate === "closed" ? ` <svg width="14" height="14" viewBox="-7 -7 14 14">${gateMark("closed")}</svg>` : ""}${closingBadge(site)}
      · ${t("board")}${colon()}“${raw(site?.sign ?? "")}”</p>
    ${open ? `<p class="open-tickets">${t("open_ticket")}${colon()}${open}</p>` : ""}
    <h2>${t("history")}</h2>
    <div class="actions">${[1, 6, 24, 168].map((hh) => `<button type="button" data-range="${hh}" class="${!zoomed && hh === range ? "on" : ""}" onclick="location.hash='#/site/${esc(node)}?h=${hh}'">${hh < 24 ? t("hr", { n: hh }) : t("day", { n: hh / 24 })}</button>`).join("")}
      ${zoomed ? `<button type="button" data-testid="zoom-reset" onclick="location.hash='#/site/${esc(node)}?h=${range}'">${t("zoom_reset")}</button>` : ""}
      <span class="muted">${t("zoom_hint")}</span></div>
    ${chartSvg(hist.points, level?.thresholds ?? { warning: forecast.warning_mm, danger: forecast.danger_mm }, from, ahead, steps, zoomed ? null : to)}
    ${forecastNote(forecast)}
    <h2>${t("devices")}</h2><div class="scroll"><table data-testid="devices">${info.devices.map((d) => `<tr><td>${t(`dev.${d.kind}`)} ${raw(d.dev)}</td><td class="wide">${raw(d.model)}</td>
      ${healthCells(info.health?.devices?.[d.dev], goodAt[d.dev], info.health?.uptime_s)}</tr>`).join("")}</table></div>
    ${canCommand ? `<h2>${t("commands")}</h2><div class="actions" data-testid="commands">
      ${sign ? `<input id="message" value="${BOARD_MESSAGE}" size="20" translate="no"><button type="button" data-cmd="sign.show" data-dev="${esc(sign.dev)}">${t("show_message")}</button>` : ""}
      ${gate ? `<button type="button" class="warn" data-cmd="gate.close" data-dev="${esc(gate.dev)}">${t("close_gate")}</button>
               <button type="button" data-cmd="gate.open" data-dev="${esc(gate.dev)}">${t("open_gate")}</button>` : ""}
      </div><p data-testid="command-result" id="command-result">${commandNotes[node] ?? ""}</p>` : ""}
  </section>`;
  const chart = document.querySelector('[data-testid="chart"]');
  if (chart) zoomable(chart, (a, b) => { location.hash = `#/site/${node}?h=${range}&from=${a}&to=${b}`; });
  document.querySelectorAll("[data-cmd]").forEach((b) => {
    b.onclick = async () => {
      if (!confirm(`${t("confirm_cmd")} ${b.textContent}`)) return;
      const say = (html) => {
        commandNotes[node] = html;
        const out = document.getElementById("command-result");  // the page may have been redrawn
        if (out) out.innerHTML = html;
      };
      const body = { node, type: b.dataset.cmd, dev: b.dataset.dev, reason: "dashboard", args: {} };
      if (b.dataset.cmd === "sign.show") body.args.message = document.getElementById("message").value;
      try {
        let c = await api("/api/v1/commands", { method: "POST", body: JSON.stringify(body) });
        say(`${esc(b.textContent)} · ${t("result")}${colon()}${commandResult(c)}`);
        for (let i = 0; i < 40 && c.status === "sent"; i++) {
          await new Promise((r) => setTimeout(r, 500));
          c = await api(`/api/v1/commands/${c.cmd_id}`);
        }
        say(`${esc(b.textContent)} · ${t("result")}${colon()}${commandResult(c)}`);
      } catch (e) { say(errorHtml(e)); }
    };
  });
}

// ------------------------------------------------------------- measures

// Horizontal bars, one row per item; ``parts`` stack (each a [value, class]).
const textWidth = (s) => [...String(s)].reduce((n, c) => n + (c.charCodeAt(0) > 0x2e7f ? 12.5 : 7), 0);  // 12px font

function barChart(testid, title, rows, fmt) {
  const rowH = 22, labelW = Math.min(330, Math.max(80, ...rows.map((r) => textWidth(r.label))) + 10);
  const barW = 320, w = labelW + barW + 80;
  const max = Math.max(1e-9, ...rows.map((r) => r.parts.reduce((a, [v]) => a + (v ?? 0), 0)));
  const body = rows.map((r, i) => {
    let x = labelW;
    const bars = r.parts.map(([v, cls]) => { const bw = ((v ?? 0) / max) * barW, out = `<rect class="bar ${cls}" x="${x}" y="${i * rowH + 4}" width="${bw.toFixed(1)}" height="${rowH - 8}"></rect>`; x += bw; return out; }).join("");
    return `<g data-testid="bar-row"><text x="${labelW - 6}" y="${i * rowH + 15}" text-anchor="end">${esc(r.label)}</text>${bars}<text x="${x + 6}" y="${i * rowH + 15}">${esc(fmt(r))}</text></g>`;
  }).join("");
  return `<figure class="card"><h2>${title}</h2><svg class="bars" data-testid="${testid}" width="${w}" height="${Math.max(rowH, rows.length * rowH)}" viewBox="0 0 ${w} ${Math.max(rowH, rows.length * rowH)}">${body || `<text x="0" y="15">${t("none")}</text>`}</svg></figure>`;
}

async function renderMeasures() {
  const seq = routeSeq;
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  // Today as the collector counts months and seasons (its time zone, not the browser's):
  // late on a month's last day in UTC it is already the next month in Guangzhou.
  const [year, mm_, dd] = new Intl.DateTimeFormat("en-CA", { timeZone: uiConfig.timezone || undefined,
    year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date(serverNow())).split("-");
  const month = params.get("month") || `${year}-${mm_}`;
  // The season that has begun: before its first day, last year's.
  const begun = `${mm_}-${dd}` >= (uiConfig.flood_season?.start ?? "04-01");
  const season = params.get("season") || String(begun ? Number(year) : Number(year) - 1);
  const [units, sites, known] = await Promise.all([
    api(`/api/v1/measures/units?month=${month}`), api(`/api/v1/measures/sites?season=${season}`), api("/api/v1/sites"),
  ]);
  const given = Object.fromEntries(known.map((s) => [s.node, s.name || s.node]));
  const name = (node) => siteName(node, given[node]);
  const pct = (v) => (v == null ? "–" : `${num(v * 100, 1)}%`);
  // Under an hour in minutes (a 25-minute flood is not "0.4 h", a 5-minute one not "0.0 h").
  const hours = (v) => (v == null ? "–" : v < 1 ? t("min", { n: num(v * 60) }) : `${num(v, v >= 10 ? 0 : 1)} ${t("h_short")}`);
  const maxT = Math.max(1, ...units.map((u) => u.tickets));
  // A peak in the colour of the highest level the site's floods reached against its own
  // thresholds (as "Floods by site" beside it): 205 mm under a 270 mm danger line is no red bar.
  const peakLevel = (s) => (s.alerts.danger ? "danger" : s.alerts.warning ? "warning" : "");
  const charts = `<div class="charts">
    ${barChart("chart-on-time", t("on_time_by_unit"), units.map((u) => ({ label: unitName(u.unit), parts: [[u.on_time_accept_rate, ""]], v: u.on_time_accept_rate })), (r) => pct(r.v))}
    ${barChart("chart-escalations", t("escalations_by_unit"), units.map((u) => ({ label: unitName(u.unit), parts: [[u.escalations, "danger"]], v: u.escalations })), (r) => num(r.v))}
    ${barChart("chart-alerts", t("alerts_by_site"), sites.map((s) => ({ label: name(s.node), parts: [[s.alerts.warning, "warning"], [s.alerts.danger, "danger"]], v: s.alerts.warning + s.alerts.danger })), (r) => num(r.v))}
    ${barChart("chart-peak", t("peak_by_site"), sites.map((s) => ({ label: name(s.node), parts: [[s.peak_depth_mm, peakLevel(s)]], v: s.peak_depth_mm })), (r) => mm(r.v))}
  </div>`;
  if (seq !== routeSeq) return;  // the user went elsewhere meanwhile: draw nothing
  $main().innerHTML = `${charts}<section class="card"><h2>${t("measures_units")}</h2>
    <div class="form-row"><label>${t("month")}</label><input id="month" type="month" value="${month}">
      <button type="button" data-report="units.csv?month=${month}" data-testid="report-units-csv">${t("report_csv")}</button>
      <button type="button" data-report="units.pdf?month=${month}" data-testid="report-units-pdf">${t("report_pdf")}</button></div>
    <div class="scroll"><table class="reflow" data-testid="unit-measures"><tr><th>${t("unit")}</th><th>${t("ticket_count")}</th><th class="wide"></th><th>${t("on_time_accept")}</th><th>${t("on_time_handle")}</th>
      <th>${t("avg_h")}</th><th>${t("p90_h")}</th><th>${t("satisfaction")}</th><th>${t("escalations")}</th></tr>
      ${units.map((u) => `<tr><td>${esc(unitName(u.unit))}</td><td>${num(u.tickets)}</td><td class="wide"><svg width="120" height="12"><rect class="bar" width="${(u.tickets / maxT) * 120}" height="12"></rect></svg></td>
        <td>${pct(u.on_time_accept_rate)}</td><td>${pct(u.on_time_handle_rate)}</td><td>${hours(u.handling_hours_avg)}</td><td>${hours(u.handling_hours_p90)}</td>
        <td>${pct(u.satisfaction)}</td><td>${num(u.escalations)}</td></tr>`).join("")}</table></div></section>
    <section class="card" style="margin-top:16px"><h2>${t("measures_sites")}</h2>
    <div class="form-row"><label>${t("season")}</label><input id="season" type="number" value="${season}" min="2000" max="2100">
      <button type="button" data-report="sites.csv?season=${season}" data-testid="report-sites-csv">${t("report_csv")}</button>
      <button type="button" data-report="sites.pdf?season=${season}" data-testid="report-sites-pdf">${t("report_pdf")}</button></div>
    <div class="scroll"><table class="reflow" data-testid="site-measures"><tr><th>${t("site")}</th><th>${t("floods")}</th><th>${t("reached_danger")}</th><th>${t("warning_only")}</th><th>${t("faults")}</th><th>${t("peak")}</th><th>${t("hours_above")}</th></tr>
      ${sites.map((s) => `<tr><td>${esc(name(s.node))}</td><td>${num(s.floods ?? s.alerts.warning + s.alerts.danger)}</td><td>${num(s.alerts.danger)}</td><td>${num(s.alerts.warning)}</td><td>${num(s.faults)}</td><td data-testid="peak">${mm(s.peak_depth_mm)}</td><td data-testid="hours-above">${hours(s.hours_above_threshold)}</td></tr>`).join("")}</table></div></section>`;
  labelCells($main());
  document.getElementById("month").onchange = (ev) => { location.hash = `#/measures?month=${ev.target.value}&season=${season}`; };
  document.getElementById("season").onchange = (ev) => { location.hash = `#/measures?month=${month}&season=${ev.target.value}`; };
  document.querySelectorAll("[data-report]").forEach((b) => { b.onclick = () => downloadReport(b.dataset.report); });
}

// On a phone a wide table reflows: one block per row, each cell with its column's name before it
// (data-label, from the header row).
function labelCells(root) {
  for (const table of root.querySelectorAll("table.reflow")) {
    const heads = [...table.rows[0].cells].map((c) => c.textContent.trim());
    for (const row of [...table.rows].slice(1)) [...row.cells].forEach((c, i) => { c.dataset.label = heads[i] ?? ""; });
  }
}

// The office's report files: fetched with the token (a plain link cannot send it), then saved.
async function downloadReport(what) {
  const r = await fetch(`/api/v1/reports/${what}&lang=${lang}`, { headers: { Authorization: `Bearer ${token()}` } });
  if (!r.ok) { const e = new ApiError(r.status, await r.json().catch(() => ({}))); alert(`${e.shown()}\n${e.message}`); return; }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob());
  a.download = /filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "")?.[1] || what.split("?")[0];
  a.click();
  URL.revokeObjectURL(a.href);
}

// ---------------------------------------------------------------- router

async function route() {
  const seq = ++routeSeq;
  translate();
  const hash = location.hash || "#/";
  if (!token()) { document.getElementById("nav").hidden = true; renderLogin(); return; }
  try {
    if (!me) me = await api("/api/v1/me");
    if (!outline) outline = await (await fetch("/dashboard/huangpu.geojson")).json();
    if (!uiConfig.loaded) uiConfig = { ...(await api("/api/v1/ui-config")), loaded: true };
    if (!vocab) vocab = await api("/api/v1/vocab");
  } catch (e) { return; }
  document.getElementById("nav").hidden = false;
  document.getElementById("who").innerHTML = `${raw(me.username)} (${t(`role.${me.role}`)})`;
  const offset = new Intl.DateTimeFormat("en-GB", { timeZone: tz(), timeZoneName: "longOffset" }).formatToParts(new Date(serverNow())).find((p) => p.type === "timeZoneName")?.value;
  const zone = document.getElementById("tz");
  zone.innerHTML = t("tz_note", { tz: `<span translate="no">${esc(uiConfig.timezone)} (${esc(offset)})</span>` });
  zone.title = t("tz_hint");
  zone.dataset.tz = uiConfig.timezone;
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
    if (e.message !== "401" && seq === routeSeq) $main().innerHTML = `<p class="error" data-testid="page-error">${errorHtml(e)}</p>`;
  }
  if (seq !== routeSeq) return;
  for (const el of $main().querySelectorAll("textarea[id], input[id], select[id]")) {
    const draft = drafts[`${hash}|${el.id}`];
    if (draft !== undefined) el.value = draft;
  }
  document.body.dataset.rendered = `${lang}:${hash}`;  // for the tests: this page is drawn in this language
}

document.getElementById("lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("lang", lang); route(); };
document.getElementById("logout").onclick = logout;
document.addEventListener("input", (ev) => { if (ev.target.id && $main().contains(ev.target)) drafts[`${location.hash}|${ev.target.id}`] = ev.target.value; });
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => { const svg = document.getElementById("map"); if (svg) layoutMap(svg); });
route();
