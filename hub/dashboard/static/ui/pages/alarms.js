// Alarms: open alarms by severity and age, acknowledge / clear / shelve / comment, each alarm's history, the
// cleared ones; more than FLOOD_COUNT raised within FLOOD_WINDOW_S is a flood, shown grouped by rule.
import { registerPage, addMessages, t, api, can, fmt, h, currentLang, notice } from "../app.js";
import { raw, table, ask, debounce, label } from "../ops.js";

const SEVERITIES = ["critical", "major", "minor", "warning", "info"];
const FLOOD_COUNT = 10;
const FLOOD_WINDOW_S = 600;

addMessages({
  th: {
    "alarms.title": "สัญญาณเตือน", "alarms.open": "สัญญาณเตือนที่เปิดอยู่", "alarms.history": "ประวัติ (ปิดแล้ว)",
    "alarms.severity": "ระดับ", "alarms.alarm": "สัญญาณเตือน", "alarms.device": "อุปกรณ์", "alarms.state": "สถานะ",
    "alarms.age": "เริ่มเมื่อ", "alarms.count": "ครั้ง", "alarms.by": "โดย", "alarms.actions": "การดำเนินการ",
    "alarms.ack": "รับทราบ", "alarms.clear": "ปิด", "alarms.shelve": "พักไว้", "alarms.comment": "หมายเหตุ",
    "alarms.ack_group": "รับทราบทั้งกลุ่ม", "alarms.show": "แสดง", "alarms.hide": "ซ่อน",
    "alarms.flood": "สัญญาณเตือนท่วม: {n} รายการใน 10 นาที จัดกลุ่มตามกฎ",
    "alarms.group": "{n} ×", "alarms.cleared_at": "ปิดเมื่อ",
    "alarms.details": "รายละเอียดและประวัติ", "alarms.hours": "จำนวนชั่วโมง", "alarms.reason": "เหตุผล",
    "alarms.text": "ข้อความ", "alarms.confirm_clear": "ปิดสัญญาณเตือนนี้?", "alarms.pick": "เลือกสัญญาณเตือนเพื่อดูประวัติ",
    "alarms.at": "เวลา", "alarms.action": "การกระทำ", "alarms.note": "หมายเหตุ",
    "alarms.latched": "ค้างจนกว่าจะปิด",
    "severity.critical": "วิกฤต", "severity.major": "สูง", "severity.minor": "ปานกลาง", "severity.warning": "เฝ้าระวัง",
    "severity.info": "แจ้งให้ทราบ",
    "alarmstate.active": "ยังไม่รับทราบ", "alarmstate.acknowledged": "รับทราบแล้ว", "alarmstate.shelved": "พักไว้",
    "alarmstate.cleared": "ปิดแล้ว",
    "alarmaction.raised": "เกิดขึ้น", "alarmaction.repeated": "เกิดซ้ำ", "alarmaction.acknowledged": "รับทราบ",
    "alarmaction.cleared": "ปิด", "alarmaction.shelved": "พักไว้", "alarmaction.unshelved": "กลับจากพัก",
    "alarmaction.commented": "หมายเหตุ", "alarmaction.escalated": "ยกระดับการแจ้ง",
  },
  en: {
    "alarms.title": "Alarms", "alarms.open": "Open alarms", "alarms.history": "History (cleared)",
    "alarms.severity": "Severity", "alarms.alarm": "Alarm", "alarms.device": "Device", "alarms.state": "State",
    "alarms.age": "Since", "alarms.count": "Count", "alarms.by": "By", "alarms.actions": "Actions",
    "alarms.ack": "Acknowledge", "alarms.clear": "Clear", "alarms.shelve": "Shelve", "alarms.comment": "Comment",
    "alarms.ack_group": "Acknowledge group", "alarms.show": "Show", "alarms.hide": "Hide",
    "alarms.flood": "Alarm flood: {n} in 10 minutes, grouped by rule",
    "alarms.group": "{n} ×", "alarms.cleared_at": "Cleared",
    "alarms.details": "Details and history", "alarms.hours": "Hours", "alarms.reason": "Reason",
    "alarms.text": "Text", "alarms.confirm_clear": "Clear this alarm?", "alarms.pick": "Pick an alarm to see its history",
    "alarms.at": "At", "alarms.action": "Action", "alarms.note": "Note",
    "alarms.latched": "latched until cleared",
    "severity.critical": "critical", "severity.major": "major", "severity.minor": "minor", "severity.warning": "warning",
    "severity.info": "info",
    "alarmstate.active": "unacknowledged", "alarmstate.acknowledged": "acknowledged", "alarmstate.shelved": "shelved",
    "alarmstate.cleared": "cleared",
    "alarmaction.raised": "raised", "alarmaction.repeated": "repeated", "alarmaction.acknowledged": "acknowledged",
    "alarmaction.cleared": "cleared", "alarmaction.shelved": "shelved", "alarmaction.unshelved": "unshelved",
    "alarmaction.commented": "comment", "alarmaction.escalated": "escalated",
  },
});

function title(alarm) {
  return (currentLang() === "en" ? alarm.title_en : alarm.title_th) || alarm.rule;
}

function details(detail) {
  if (!detail || typeof detail !== "object") return detail;
  return Object.entries(detail).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
}

function byUrgency(a, b) {
  return SEVERITIES.indexOf(a.severity) - SEVERITIES.indexOf(b.severity)
    || String(a.first_seen).localeCompare(String(b.first_seen));
}

/** Alarms raised within the flood window, when there are more than FLOOD_COUNT of them. */
export function flood(alarms, now = Date.now()) {
  const recent = alarms.filter((a) => now - new Date(a.first_seen).getTime() <= FLOOD_WINDOW_S * 1000);
  return recent.length > FLOOD_COUNT ? recent : [];
}

registerPage("alarms", {
  title: { th: "สัญญาณเตือน", en: "Alarms" },
  roles: [],
  async render(el, ctx) {
    const summary = h("div", { class: "counts", id: "alarm-counts" });
    const floodBox = h("div", { id: "alarm-flood" });
    const openBox = h("div", { id: "alarms-open" });
    const detail = h("div", { class: "card", id: "alarm-detail" }, h("p", { class: "muted" }, t("alarms.pick")));
    const historyBox = h("div", { id: "alarms-history" });
    const expanded = new Set();
    let selected = null;
    el.append(h("h1", {}, t("alarms.title")), summary, floodBox, h("h2", {}, t("alarms.open")), openBox,
      h("h2", {}, t("alarms.details")), detail, h("h2", {}, t("alarms.history")), historyBox);

    async function act(alarm, action) {
      let body;
      if (action === "shelve") {
        const v = await ask("alarms.shelve", [
          { name: "hours", label: "alarms.hours", type: "number", min: "0.25", max: "720", step: "0.25", value: "4",
            required: true },
          { name: "comment", label: "alarms.reason", type: "textarea", required: true }]);
        if (!v) return;
        body = { for_s: Number(v.hours) * 3600, comment: v.comment };
      } else if (action === "comment") {
        const v = await ask("alarms.comment", [{ name: "comment", label: "alarms.text", type: "textarea", required: true }]);
        if (!v) return;
        body = { comment: v.comment };
      } else if (action === "clear") {
        const v = await ask("alarms.confirm_clear", [{ name: "comment", label: "alarms.note", type: "textarea" }],
          { confirm: "alarms.clear" });
        if (!v) return;
        body = v.comment ? { comment: v.comment } : {};
      } else {
        body = {};
      }
      try {
        await api(`/api/alarms/${alarm.id}/${action}`, { method: "POST", body });
      } catch (err) {
        if (err.status !== 403 && err.status !== 401) notice(t("shell.failed", { detail: err.message }), "error");
        return;
      }
      selected = alarm.id;
      await reload();
    }

    function buttons(alarm) {
      if (!can("operator")) return "";
      return h("span", { class: "row" },
        alarm.state === "active" ? h("button", { type: "button", class: "primary", dataset: { act: "ack", alarm: alarm.id },
          onclick: (e) => { e.stopPropagation(); act(alarm, "ack"); } }, t("alarms.ack")) : "",
        h("button", { type: "button", dataset: { act: "clear", alarm: alarm.id },
          onclick: (e) => { e.stopPropagation(); act(alarm, "clear"); } }, t("alarms.clear")),
        alarm.state !== "shelved" ? h("button", { type: "button", dataset: { act: "shelve", alarm: alarm.id },
          onclick: (e) => { e.stopPropagation(); act(alarm, "shelve"); } }, t("alarms.shelve")) : "",
        h("button", { type: "button", dataset: { act: "comment", alarm: alarm.id },
          onclick: (e) => { e.stopPropagation(); act(alarm, "comment"); } }, t("alarms.comment")));
    }

    const columns = [
      { label: "alarms.severity", cell: (a) => h("span", { class: `sev ${a.severity}` }, label("severity", a.severity)) },
      { label: "alarms.alarm", cell: (a) => [raw(title(a)), a.latched ? h("small", { class: "muted" }, " · ", t("alarms.latched")) : ""] },
      { label: "alarms.device", cell: (a) => h("a", { href: `#/device/${encodeURIComponent(a.device)}`, "data-raw": "" }, a.device) },
      { label: "alarms.state", cell: (a) => label("alarmstate", a.state) },
      { label: "alarms.age", cell: (a) => raw(fmt.ago(a.first_seen), { title: fmt.date(a.first_seen) }) },
      { label: "alarms.count", raw: true, cell: (a) => a.count },
      { label: "alarms.by", raw: true, cell: (a) => a.acked_by || a.shelved_by || "" },
      { label: "alarms.actions", cell: buttons },
    ];
    const rowAttrs = (a) => ({ class: `clickable${a.id === selected ? " selected" : ""}`, dataset: { alarm: a.id },
      onclick: () => { selected = a.id; showDetail(a.id); } });

    function drawFlood(open) {
      const flooded = flood(open);
      if (!flooded.length) {
        floodBox.replaceChildren();
        return new Set();
      }
      const groups = new Map();
      for (const a of flooded) {
        if (!groups.has(a.rule)) groups.set(a.rule, []);
        groups.get(a.rule).push(a);
      }
      floodBox.replaceChildren(h("div", { class: "card flood" }, h("h2", {}, t("alarms.flood", { n: flooded.length })),
        [...groups.entries()].sort((x, y) => byUrgency(x[1][0], y[1][0])).map(([rule, members]) => {
          const open = expanded.has(rule);
          const unacked = members.filter((m) => m.state === "active");
          return h("div", { class: "flood-group", dataset: { rule } },
            h("div", { class: "row" },
              h("span", { class: `sev ${members[0].severity}` }, label("severity", members[0].severity)),
              h("b", {}, t("alarms.group", { n: members.length }), " ", raw(title(members[0]))),
              h("button", { type: "button", onclick: () => { open ? expanded.delete(rule) : expanded.add(rule); reload(); } },
                open ? t("alarms.hide") : t("alarms.show")),
              can("operator") && unacked.length ? h("button", { type: "button", class: "primary", dataset: { ackGroup: rule },
                onclick: async () => {
                for (const m of unacked) await api(`/api/alarms/${m.id}/ack`, { method: "POST", body: {} }).catch(() => null);
                reload();
              } }, t("alarms.ack_group")) : ""),
            open ? table(columns, members.sort(byUrgency), { rowAttrs }) : "");
        })));
      return new Set(flooded.map((a) => a.id));
    }

    async function showDetail(id) {
      const a = await api(`/api/alarms/${id}`);
      detail.replaceChildren(
        h("div", { class: "row" }, h("span", { class: `sev ${a.severity}` }, label("severity", a.severity)),
          h("b", {}, raw(title(a))), raw(a.device), label("alarmstate", a.state), buttons(a)),
        h("p", { class: "muted" }, raw(details(a.detail))),
        table([
          { label: "alarms.at", raw: true, cell: (x) => fmt.date(x.at) },
          { label: "alarms.action", cell: (x) => label("alarmaction", x.action) },
          { label: "alarms.by", raw: true, cell: (x) => x.user || "" },
          { label: "alarms.note", raw: true, cell: (x) => x.comment || "" },
          { label: "alarms.state", cell: (x) => label("alarmstate", x.state) },
        ], a.history || []));
    }

    async function reload() {
      const [active, acked, shelved, cleared] = await Promise.all(["active", "acknowledged", "shelved", "cleared"]
        .map((state) => api(`/api/alarms?state=${state}&limit=1000`)));
      const open = [...active, ...acked, ...shelved].sort(byUrgency);
      summary.replaceChildren(...SEVERITIES.map((s) => h("div", { class: `count sev-${s}`, dataset: { severity: s } },
        h("b", { "data-raw": "" }, String(open.filter((a) => a.severity === s).length)), label("severity", s))));
      const grouped = drawFlood(open);
      openBox.replaceChildren(table(columns, open.filter((a) => !grouped.has(a.id)), { rowAttrs }));
      historyBox.replaceChildren(table([...columns.slice(0, 3),
        { label: "alarms.cleared_at", raw: true, cell: (a) => fmt.date(a.cleared_at) },
        { label: "alarms.by", raw: true, cell: (a) => a.cleared_by || "" }], cleared, { rowAttrs }));
      if (selected !== null) await showDetail(selected);
    }

    ctx.onStream("alarm", debounce(reload, 100));
    ctx.onStream("resync", reload);
    await reload();
  },
});
