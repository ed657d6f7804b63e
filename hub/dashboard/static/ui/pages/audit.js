// The audit log (admin): who changed what, when and from where, newest first, by user, object and period.
import { registerPage, addMessages, t, api, fmt, h } from "../app.js";
import { raw, table, option } from "../ops.js";

const PERIODS = [["1", "audit.day"], ["7", "audit.week"], ["30", "audit.month"], ["365", "audit.year"]];
const SHOWN_CHARS = 160;

addMessages({
  th: {
    "audit.title": "บันทึกการตรวจสอบ", "audit.user": "ผู้ใช้", "audit.object": "รายการ (เช่น receipt หรือ alarm/12)",
    "audit.period": "ช่วงเวลา", "audit.day": "24 ชั่วโมง", "audit.week": "7 วัน", "audit.month": "30 วัน", "audit.year": "1 ปี",
    "audit.at": "เวลา", "audit.address": "ที่อยู่", "audit.action": "การกระทำ", "audit.target": "รายการ",
    "audit.before": "ก่อน", "audit.after": "หลัง", "audit.show": "แสดง", "audit.rows": "{n} แถว (ใหม่สุดก่อน)",
  },
  en: {
    "audit.title": "Audit log", "audit.user": "User", "audit.object": "Object (e.g. receipt or alarm/12)",
    "audit.period": "Period", "audit.day": "24 hours", "audit.week": "7 days", "audit.month": "30 days", "audit.year": "1 year",
    "audit.at": "At", "audit.address": "Address", "audit.action": "Action", "audit.target": "Object",
    "audit.before": "Before", "audit.after": "After", "audit.show": "Show", "audit.rows": "{n} rows (newest first)",
  },
});

function compact(value) {
  if (value === null || value === undefined) return "";
  const text = JSON.stringify(value);
  return text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}…` : text;
}

registerPage("audit", {
  title: { th: "บันทึกการตรวจสอบ", en: "Audit log" },
  roles: ["admin"],
  async render(el, ctx) {
    const user = h("input", { id: "audit-user", maxlength: "32", value: ctx.query.get("user") || "" });
    const object = h("input", { id: "audit-object", maxlength: "200", value: ctx.query.get("object") || "" });
    const period = h("select", { id: "audit-period" }, PERIODS.map(([days, key]) => h("option", { value: days }, t(key))));
    const users = h("datalist", { id: "audit-users" });
    user.setAttribute("list", "audit-users");
    const count = h("p", { class: "muted" });
    const rows = h("div", { id: "audit-rows" });
    el.append(h("h1", {}, t("audit.title")), users,
      h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); load(); } },
        h("label", {}, t("audit.user"), " ", user), h("label", {}, t("audit.object"), " ", object),
        h("label", {}, t("audit.period"), " ", period), h("button", { type: "submit", class: "primary" }, t("audit.show"))),
      count, rows);

    async function load() {
      const since = new Date(Date.now() - Number(period.value) * 86_400_000).toISOString();
      const params = new URLSearchParams({ since, limit: "10000" });
      if (user.value.trim()) params.set("user", user.value.trim());
      if (object.value.trim()) params.set("object", object.value.trim());
      const entries = (await api(`/api/audit?${params}`)).reverse();
      users.replaceChildren(...[...new Set(entries.map((e) => e.user))].sort().map((u) => option(u)));
      count.replaceChildren(t("audit.rows", { n: entries.length }));
      rows.replaceChildren(table([
        { label: "audit.at", raw: true, cell: (e) => fmt.date(e.at) },
        { label: "audit.user", raw: true, cell: (e) => e.user },
        { label: "audit.address", raw: true, cell: (e) => e.address },
        { label: "audit.action", raw: true, cell: (e) => e.action },
        { label: "audit.target", raw: true, cell: (e) => e.object },
        { label: "audit.before", raw: true, cell: (e) => compact(e.before) },
        { label: "audit.after", raw: true, cell: (e) => compact(e.after) },
      ], entries, { rowAttrs: (e) => ({ dataset: { audit: e.id, action: e.action, user: e.user } }) }));
    }

    await load();
  },
});
