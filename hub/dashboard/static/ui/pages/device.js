// Device: liveness, charts of each quantity from server-side aggregates (hour/day/week/month, drag to zoom,
// double-click to go back), PM2.5 on the Thai AQI bands, events, alarms, commands with their history, heartbeat.
import { ApiError, addMessages, api, can, confirmAction, fmt, h, loadScript, loadStyle, registerPage, t } from "../app.js";
import { badge, clockText, dataBadge, linkOf } from "../devices.js";

const WINDOWS = { hour: 3600, day: 86400, week: 7 * 86400, month: 30 * 86400 };
const MAX_BUCKETS = 2000;
const COMMANDS = { ping: {}, set_interval: { sensor: "pm", interval_s: 10 }, reload_config: {}, output: { sensor: "led", on: true } };
const AQI_BANDS = [  // PM2.5 24 h, µg/m³ (PCD B.E. 2566): upper edge, colour
  [15.0, "very_good", "rgba(59, 143, 217, 0.16)"], [25.0, "good", "rgba(59, 181, 74, 0.16)"],
  [37.5, "moderate", "rgba(245, 208, 0, 0.22)"], [75.0, "unhealthy_sensitive", "rgba(242, 140, 40, 0.2)"],
  [Infinity, "unhealthy", "rgba(229, 57, 53, 0.18)"]];
const PM25 = new Set(["pm2_5", "pm25", "pm2.5"]);

addMessages({
  th: {
    "device.kind": "ชนิด", "device.site": "สถานที่", "device.last_seen": "ติดต่อล่าสุด", "device.first_seen": "พบครั้งแรก",
    "device.charts": "กราฟ", "device.window.hour": "ชั่วโมง", "device.window.day": "วัน", "device.window.week": "สัปดาห์",
    "device.window.month": "เดือน", "device.zoom_hint": "ลากบนกราฟเพื่อขยาย ดับเบิลคลิกเพื่อกลับ",
    "device.no_quantities": "ยังไม่มีค่าที่วัดได้", "device.series.min": "ต่ำสุด", "device.series.avg": "เฉลี่ย",
    "device.series.max": "สูงสุด", "device.buckets": "{n} ช่วง ช่วงละ {seconds} วินาที, {count} ค่า",
    "device.events": "เหตุการณ์ล่าสุด", "device.alarms": "สัญญาณเตือน", "device.none": "ไม่มี",
    "device.commands": "คำสั่ง", "device.command": "คำสั่ง", "device.args": "อาร์กิวเมนต์ (JSON)",
    "device.queue": "เข้าคิวถ้าอุปกรณ์ออฟไลน์", "device.send": "ส่งคำสั่ง",
    "device.confirm": "ส่งคำสั่ง {name} ไปยัง {device}?", "device.bad_args": "อาร์กิวเมนต์ต้องเป็นออบเจกต์ JSON",
    "device.outcome": "ผล: {outcome}", "device.history": "ประวัติคำสั่ง", "device.requested": "สั่งเมื่อ",
    "device.replied": "ตอบเมื่อ", "device.result": "ผลลัพธ์", "device.heartbeat": "รายละเอียดสถานะ (heartbeat)",
    "device.sensor": "เซนเซอร์", "device.quantity": "ค่า", "device.time": "เวลา", "device.event": "เหตุการณ์",
    "device.severity": "ระดับ", "device.state": "สถานะ", "device.title": "เรื่อง", "device.count": "จำนวน",
    "device.received": "รับแล้ว", "device.lost": "สูญหาย", "device.duplicates": "ซ้ำ", "device.dropped": "ทิ้งที่อุปกรณ์",
    "device.interval": "รอบ (วินาที)", "device.age": "อายุ", "device.not_found": "ไม่พบอุปกรณ์ {device}",
    "aqi.very_good": "ดีมาก", "aqi.good": "ดี", "aqi.moderate": "ปานกลาง", "aqi.unhealthy_sensitive": "เริ่มมีผลกระทบต่อสุขภาพ",
    "aqi.unhealthy": "มีผลกระทบต่อสุขภาพ", "aqi.legend": "แถบสีดัชนีคุณภาพอากาศ (PM2.5)",
    "device.outcome_col": "ผล", "hb.uptime_s": "เวลาทำงาน (วินาที)", "hb.heartbeat_s": "รอบ heartbeat (วินาที)",
    "hb.outbox_depth": "ค้างส่ง", "hb.dropped": "ทิ้งที่อุปกรณ์", "hb.config_version": "รุ่นค่าตั้ง",
    "hb.publish_errors": "ส่งไม่สำเร็จ", "hb.last_error": "ข้อผิดพลาดล่าสุด", "hb.node": "ชนิด", "hb.site": "สถานที่",
    "hb.location": "พิกัด", "hb.tasks": "งานที่ล้มเหลว", "hb.outbox_error": "ปัญหาคิวส่ง", "hb.unstored": "เก็บไม่ได้",
    "hb.set_aside": "กันไว้",
  },
  en: {
    "device.kind": "Kind", "device.site": "Site", "device.last_seen": "Last seen", "device.first_seen": "First seen",
    "device.charts": "Charts", "device.window.hour": "Hour", "device.window.day": "Day", "device.window.week": "Week",
    "device.window.month": "Month", "device.zoom_hint": "Drag on a chart to zoom, double-click to go back",
    "device.no_quantities": "No measurements yet", "device.series.min": "min", "device.series.avg": "avg",
    "device.series.max": "max", "device.buckets": "{n} buckets of {seconds} s, {count} readings",
    "device.events": "Recent events", "device.alarms": "Alarms", "device.none": "None",
    "device.commands": "Commands", "device.command": "Command", "device.args": "Arguments (JSON)",
    "device.queue": "Queue if the device is offline", "device.send": "Send command",
    "device.confirm": "Send {name} to {device}?", "device.bad_args": "The arguments must be a JSON object",
    "device.outcome": "Outcome: {outcome}", "device.history": "Command history", "device.requested": "Requested",
    "device.replied": "Replied", "device.result": "Result", "device.heartbeat": "Heartbeat details",
    "device.sensor": "Sensor", "device.quantity": "Quantity", "device.time": "Time", "device.event": "Event",
    "device.severity": "Severity", "device.state": "State", "device.title": "Title", "device.count": "Count",
    "device.received": "Received", "device.lost": "Lost", "device.duplicates": "Duplicates", "device.dropped": "Dropped at edge",
    "device.interval": "Interval (s)", "device.age": "Age", "device.not_found": "No device {device}",
    "aqi.very_good": "very good", "aqi.good": "good", "aqi.moderate": "moderate", "aqi.unhealthy_sensitive": "starting to affect health",
    "aqi.unhealthy": "affects health", "aqi.legend": "Thai AQI bands (PM2.5)",
    "device.outcome_col": "Outcome", "hb.uptime_s": "Uptime (s)", "hb.heartbeat_s": "Heartbeat period (s)",
    "hb.outbox_depth": "Outbox depth", "hb.dropped": "Dropped at edge", "hb.config_version": "Config version",
    "hb.publish_errors": "Publish errors", "hb.last_error": "Last error", "hb.node": "Kind", "hb.site": "Site",
    "hb.location": "Location", "hb.tasks": "Failed tasks", "hb.outbox_error": "Outbox problem", "hb.unstored": "Unstored",
    "hb.set_aside": "Set aside",
  },
});

function table(headers, rows) {
  if (rows.length === 0) return h("p", { class: "muted" }, t("device.none"));
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ...headers.map((k) => h("th", {}, t(k))))), h("tbody", {}, ...rows)));
}

function raw(value) {
  return h("td", { "data-raw": "" }, value === null || value === undefined ? "—"
    : typeof value === "object" ? JSON.stringify(value) : String(value));
}

function aqiBands(u) {
  const { ctx, bbox } = u;
  let lower = 0;
  for (const [upper, , colour] of AQI_BANDS) {
    const top = u.valToPos(Math.min(upper, u.scales.y.max), "y", true);
    const bottom = u.valToPos(Math.max(lower, u.scales.y.min), "y", true);
    if (upper > u.scales.y.min && lower < u.scales.y.max) {
      ctx.fillStyle = colour;
      ctx.fillRect(bbox.left, top, bbox.width, bottom - top);
    }
    lower = upper;
  }
}

function axisLabel(seconds, state) {
  const span = (state.until - state.since) / 1000;
  const options = span <= 2 * 86400 ? { hour: "2-digit", minute: "2-digit" } : { day: "numeric", month: "short" };
  return fmt.date(seconds, options);
}

async function uplot() {
  await Promise.all([loadStyle("/vendor/uplot/uPlot.min.css"), loadScript("/vendor/uplot/uPlot.iife.min.js")]);
  return window.uPlot;
}

function chartCard(device, q, windowS, charts) {
  const title = h("h2", {}, h("span", { "data-raw": "" }, `${q.quantity}${q.unit ? ` (${q.unit})` : ""}`));
  const info = h("p", { class: "muted chart-info" });
  const plot = h("div", { class: "chart", dataset: { quantity: q.quantity } });
  const card = h("section", { class: "card" }, title, plot, info);
  if (PM25.has(q.quantity)) {
    card.append(h("div", { class: "legend" }, t("aqi.legend"), ": ",
      ...AQI_BANDS.map(([, key, colour]) => h("span", {}, h("span", { class: "dot", style: `background:${colour.replace(/[\d.]+\)$/, "0.9)")}` }),
        t(`aqi.${key}`)))));
  }
  let chart = null;
  const state = { since: null, until: null };

  async function load(since, until) {
    state.since = since;
    state.until = until;
    const width = Math.max(200, plot.clientWidth || 600);
    const buckets = Math.min(MAX_BUCKETS, Math.floor(width / 2));
    const answer = await api(`/api/devices/${encodeURIComponent(device)}/readings/aggregate?quantity=${encodeURIComponent(q.quantity)}`
      + `&since=${since.toISOString()}&until=${until.toISOString()}&buckets=${buckets}`);
    charts[q.quantity] = { since: since.toISOString(), until: until.toISOString(), ...answer };
    const xs = answer.buckets.map((b) => Date.parse(b.t) / 1000 + answer.bucket_s / 2);
    const data = [xs, answer.buckets.map((b) => b.min), answer.buckets.map((b) => b.avg), answer.buckets.map((b) => b.max)];
    const count = answer.buckets.reduce((n, b) => n + b.count, 0);
    info.textContent = t("device.buckets", { n: answer.buckets.length, seconds: fmt.number(answer.bucket_s, 1), count });
    const uPlot = await uplot();
    if (chart) {
      chart.setData(data, false);
      chart.setScale("x", { min: since.getTime() / 1000, max: until.getTime() / 1000 });
      return;
    }
    chart = new uPlot({
      width, height: 240, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Asia/Bangkok"),
      scales: { x: { time: true, range: () => [state.since.getTime() / 1000, state.until.getTime() / 1000] } },
      cursor: { drag: { x: true, y: false, setScale: false } },
      axes: [{ values: (u, splits) => splits.map((v) => axisLabel(v, state)) }, {}],
      series: [{ label: t("device.time"), value: (u, v) => (v === null || v === undefined ? "—" : fmt.date(v)) },
        { label: t("device.series.min"), stroke: "#7fa7d9", width: 1 },
        { label: t("device.series.avg"), stroke: "#0b5cad", width: 2 },
        { label: t("device.series.max"), stroke: "#d4580b", width: 1 }],
      bands: [{ series: [3, 1], fill: "rgba(11, 92, 173, 0.08)" }],
      hooks: {
        drawClear: PM25.has(q.quantity) ? [aqiBands] : [],
        setSelect: [(u) => {
          if (u.select.width < 5) return;
          const from = new Date(u.posToVal(u.select.left, "x") * 1000);
          const to = new Date(u.posToVal(u.select.left + u.select.width, "x") * 1000);
          u.setSelect({ left: 0, width: 0 }, false);
          load(from, to);
        }],
      },
    }, data, plot);
    chart.over.addEventListener("dblclick", () => {
      const end = new Date();
      load(new Date(end.getTime() - windowS.current * 1000), end);
    });
  }
  return { card, load, destroy: () => chart?.destroy() };
}

registerPage("device", {
  title: { th: "อุปกรณ์", en: "Device" },
  nav: false,
  async render(el, ctx) {
    const id = ctx.params[0];
    const base = `/api/devices/${encodeURIComponent(id)}`;
    let d;
    try {
      d = await api(base, { quiet: true });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        el.append(h("p", {}, t("device.not_found", { device: id })));
        return undefined;
      }
      throw err;
    }
    const head = h("div", { class: "row" });
    const drawHead = () => head.replaceChildren(badge("link", linkOf(d)), badge("agent", d.liveness?.agent || "unknown"),
      dataBadge(d), h("span", { class: "muted" }, `${t("device.kind")}: `, h("span", { "data-raw": "" }, d.node || "—")),
      h("span", { class: "muted" }, `${t("device.site")}: `, h("span", { "data-raw": "" }, d.site || "—")),
      h("span", { class: "muted" }, `${t("device.last_seen")}: ${fmt.date(d.last_seen)} (${fmt.ago(d.last_seen)})`));
    drawHead();
    el.append(h("h1", {}, h("span", { "data-raw": "" }, id)), head);

    // charts
    const windowS = { current: WINDOWS[ctx.query.get("window")] || WINDOWS.day };
    const charts = {};
    window.nakhon.charts = charts;
    const quantities = (await api(`${base}/quantities`)).sort((a, b) =>
      Number(PM25.has(b.quantity)) - Number(PM25.has(a.quantity)));
    const cards = [];
    const windowButtons = h("div", { class: "row", id: "device-windows" }, ...Object.entries(WINDOWS).map(([key, seconds]) =>
      h("button", { type: "button", dataset: { window: key }, class: seconds === windowS.current ? "primary" : "",
        onclick: (e) => {
          windowS.current = seconds;
          for (const b of windowButtons.children) b.className = b === e.currentTarget ? "primary" : "";
          reloadCharts();
        } }, t(`device.window.${key}`))), h("span", { class: "muted" }, t("device.zoom_hint")));
    const grid = h("div", { class: "grid", id: "device-charts" });
    el.append(h("h2", {}, t("device.charts")), windowButtons, grid);
    if (quantities.length === 0) grid.append(h("p", { class: "muted" }, t("device.no_quantities")));
    for (const q of quantities) {
      const c = chartCard(id, q, windowS, charts);
      cards.push(c);
      grid.append(c.card);
    }
    ctx.cleanup(() => { cards.forEach((c) => c.destroy()); delete window.nakhon.charts; });
    function reloadCharts() {
      const end = new Date();
      return Promise.all(cards.map((c) => c.load(new Date(end.getTime() - windowS.current * 1000), end)));
    }

    // events, alarms
    const events = h("div", { id: "device-events" });
    const alarms = h("div", { id: "device-alarms" });
    el.append(h("div", { class: "grid" }, h("section", {}, h("h2", {}, t("device.events")), events),
      h("section", {}, h("h2", {}, t("device.alarms")), alarms)));
    async function loadEvents() {
      const answer = await api(`/api/events?device=${encodeURIComponent(id)}&limit=20`, { quiet: true }).catch(() => ({ events: [] }));
      events.replaceChildren(table(["device.time", "device.sensor", "device.event", "device.severity"],
        answer.events.map((e) => h("tr", {}, h("td", {}, fmt.date(e.ts)), raw(e.sensor), raw(e.event),
          h("td", {}, h("span", { class: `sev ${e.severity}`, "data-raw": "" }, e.severity))))));
    }
    async function loadAlarms() {
      const list = await api(`/api/alarms?device=${encodeURIComponent(id)}&limit=20`, { quiet: true }).catch(() => []);
      alarms.replaceChildren(table(["device.time", "device.title", "device.severity", "device.state", "device.count"],
        list.map((a) => h("tr", {}, h("td", {}, fmt.date(a.last_seen)), raw(ctx.lang === "th" ? a.title_th : a.title_en),
          h("td", {}, h("span", { class: `sev ${a.severity}`, "data-raw": "" }, a.severity)), raw(a.state), raw(a.count)))));
    }

    // commands
    const history = h("div", { id: "device-commands" });
    const commands = h("section", {}, h("h2", {}, t("device.commands")));
    if (can("operator")) {
      const name = h("select", { id: "command-name", "aria-label": t("device.command") },
        ...Object.keys(COMMANDS).map((n) => h("option", { value: n, "data-raw": "" }, n)));
      const args = h("textarea", { id: "command-args", rows: "2", cols: "40", maxlength: "4000", "aria-label": t("device.args") }, "{}");
      const queue = h("input", { type: "checkbox", id: "command-queue" });
      const outcome = h("p", { id: "command-outcome", class: "muted" });
      name.addEventListener("change", () => { args.value = JSON.stringify(COMMANDS[name.value]); });
      const send = h("button", { type: "button", class: "primary", id: "command-send", onclick: async () => {
        let parsed;
        try {
          parsed = JSON.parse(args.value || "{}");
        } catch {
          parsed = null;
        }
        if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
          outcome.textContent = t("device.bad_args");
          return;
        }
        if (!await confirmAction(t("device.confirm", { name: name.value, device: id }))) return;
        send.disabled = true;
        try {
          const answer = await api(`${base}/commands`, { method: "POST", body: { name: name.value, args: parsed, queue: queue.checked } });
          outcome.textContent = t("device.outcome", { outcome: answer.outcome });
        } catch (err) {
          if (!(err instanceof ApiError)) throw err;
          outcome.textContent = t("shell.failed", { detail: err.detail });
        } finally {
          send.disabled = false;
          loadHistory();
        }
      } }, t("device.send"));
      commands.append(h("div", { class: "card row" }, h("label", {}, t("device.command"), " ", name),
        h("label", {}, t("device.args"), " ", args), h("label", {}, queue, " ", t("device.queue")), send), outcome);
    }
    commands.append(h("h2", {}, t("device.history")), history);
    async function loadHistory() {
      const list = await api(`${base}/commands?limit=20`);
      history.replaceChildren(table(["device.command", "device.outcome_col", "device.requested", "device.replied", "device.result"],
        list.map((c) => h("tr", {}, raw(c.name), raw(c.outcome), h("td", {}, fmt.date(c.requested_at)),
          h("td", {}, fmt.date(c.replied_at)), raw(c.error || c.result)))));
    }

    // heartbeat
    const beat = h("section", { id: "device-heartbeat" });
    function drawHeartbeat() {
      const hb = d.heartbeat || {};
      const kv = (label, value) => [h("dt", {}, label), h("dd", { "data-raw": "" }, value)];
      const hbLabel = (key) => (`hb.${key}` in window.nakhon.messages.th ? t(`hb.${key}`) : h("span", { "data-raw": "" }, key));
      const streams = Object.entries(d.liveness?.data || {}).map(([sensor, s]) => h("tr", {}, raw(sensor),
        h("td", {}, badge("data", s.state)), raw(s.interval_s), h("td", {}, fmt.date(s.last_reading))));
      beat.replaceChildren(h("h2", {}, t("device.heartbeat")),
        h("dl", { class: "kv" }, ...kv(t("device.first_seen"), fmt.date(d.first_seen)),
          ...kv(t("device.received"), d.received), ...kv(t("device.lost"), d.lost),
          ...kv(t("device.duplicates"), d.duplicates), ...kv(t("device.dropped"), d.dropped_at_edge),
          ...kv(t("fleet.clock"), clockText(d)),
          ...Object.entries(hb).filter(([k]) => !["streams", "clock"].includes(k)).map(([k, v]) =>
            kv(hbLabel(k), typeof v === "object" ? JSON.stringify(v) : String(v))).flat()),
        table(["device.sensor", "device.state", "device.interval", "device.last_seen"], streams));
    }
    drawHeartbeat();
    el.append(commands, beat);

    ctx.onStream("device", async (data) => {
      if (data.device !== id) return;
      d = await api(base, { quiet: true });
      drawHead();
      drawHeartbeat();
    });
    ctx.onStream("event", (data) => { if (data.device === id) loadEvents(); });
    ctx.onStream("alarm", (data) => { if ((data.alarm || data).device === id) loadAlarms(); });
    await Promise.all([reloadCharts(), loadEvents(), loadAlarms(), loadHistory()]);
    return undefined;
  },
});
