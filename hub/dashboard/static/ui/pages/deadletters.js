// Dead letters: messages the hub refused, counted by reason and by device, with a preview of each payload.
import { registerPage, addMessages, t, api, fmt, h } from "../app.js";
import { raw, table, label, option } from "../ops.js";

const PREVIEW_CHARS = 4000;

addMessages({
  th: {
    "dead.title": "ข้อความที่ถูกปฏิเสธ", "dead.by_reason": "ตามสาเหตุ", "dead.by_device": "ตามอุปกรณ์",
    "dead.reason": "สาเหตุ", "dead.device": "อุปกรณ์", "dead.count": "จำนวน", "dead.received": "ได้รับเมื่อ",
    "dead.topic": "หัวข้อ", "dead.size": "ขนาด (ไบต์)", "dead.detail": "รายละเอียด", "dead.all": "ทั้งหมด",
    "dead.search": "ค้นหาอุปกรณ์หรือหัวข้อ", "dead.preview": "ตัวอย่างข้อมูล", "dead.pick": "เลือกข้อความเพื่อดูข้อมูล",
    "dead.binary": "ข้อมูลไบนารี (base64)", "dead.cut": "แสดง {n} ตัวอักษรแรก", "dead.list": "ข้อความ",
    "dead.limit": "จำนวนล่าสุด",
    "deadreason.oversize": "ใหญ่เกินกำหนด", "deadreason.bad_topic": "หัวข้อไม่ถูกต้อง", "deadreason.invalid_json": "JSON ไม่ถูกต้อง",
    "deadreason.schema": "ไม่ตรงตามสัญญาข้อมูล", "deadreason.device_mismatch": "อุปกรณ์ไม่ตรงกับหัวข้อ",
    "deadreason.too_deep": "ซ้อนลึกเกินไป", "deadreason.out_of_bounds": "ค่าเกินขอบเขต", "deadreason.clock_skew": "นาฬิกาคลาดเคลื่อน",
    "deadreason.store_rejected": "ที่เก็บข้อมูลปฏิเสธ", "deadreason.kind_not_allowed": "ชนิดรายการไม่ได้รับอนุญาต",
  },
  en: {
    "dead.title": "Dead letters", "dead.by_reason": "By reason", "dead.by_device": "By device",
    "dead.reason": "Reason", "dead.device": "Device", "dead.count": "Count", "dead.received": "Received",
    "dead.topic": "Topic", "dead.size": "Size (bytes)", "dead.detail": "Detail", "dead.all": "All",
    "dead.search": "Search device or topic", "dead.preview": "Payload preview", "dead.pick": "Pick a message to see its payload",
    "dead.binary": "Binary payload (base64)", "dead.cut": "first {n} characters shown", "dead.list": "Messages",
    "dead.limit": "Latest",
    "deadreason.oversize": "too large", "deadreason.bad_topic": "bad topic", "deadreason.invalid_json": "invalid JSON",
    "deadreason.schema": "breaks the contract", "deadreason.device_mismatch": "device does not match topic",
    "deadreason.too_deep": "nested too deep", "deadreason.out_of_bounds": "value out of bounds",
    "deadreason.clock_skew": "clock skew", "deadreason.store_rejected": "refused by the store",
    "deadreason.kind_not_allowed": "kind not allowed",
  },
});

/** The device a topic names: the level before up/ or down/ (nakhon/v1/kk-aq-0001/up/telemetry). */
export function deviceOf(topic) {
  const parts = String(topic).split("/");
  const at = parts.findIndex((p) => p === "up" || p === "down");
  return at > 0 ? parts[at - 1] : "";
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function counted(letters, key) {
  const counts = new Map();
  for (const d of letters) counts.set(key(d), (counts.get(key(d)) || 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1]);
}

registerPage("deadletters", {
  title: { th: "ข้อความที่ถูกปฏิเสธ", en: "Dead letters" },
  roles: [],
  async render(el) {
    const reason = h("select", { id: "dead-reason" }, h("option", { value: "" }, t("dead.all")));
    const search = h("input", { id: "dead-search", type: "search", placeholder: t("dead.search"), maxlength: "64" });
    const limit = h("select", { id: "dead-limit" }, ["100", "1000", "10000"].map((n) => option(n)));
    const counts = h("div", { class: "grid" });
    const list = h("div", { id: "dead-list" });
    const preview = h("div", { class: "card", id: "dead-preview" }, h("p", { class: "muted" }, t("dead.pick")));
    el.append(h("h1", {}, t("dead.title")),
      h("div", { class: "filters" }, h("label", {}, t("dead.reason"), " ", reason), search,
        h("label", {}, t("dead.limit"), " ", limit)),
      counts, h("h2", {}, t("dead.list")), list, h("h2", {}, t("dead.preview")), preview);
    let letters = [];

    function show(d) {
      const text = d.payload_text ?? d.payload_base64 ?? "";
      const shown = pretty(text).slice(0, PREVIEW_CHARS);
      preview.replaceChildren(
        h("dl", { class: "kv" }, h("dt", {}, t("dead.topic")), h("dd", {}, raw(d.topic)),
          h("dt", {}, t("dead.reason")), h("dd", {}, label("deadreason", d.reason)),
          h("dt", {}, t("dead.detail")), h("dd", {}, raw(d.detail)),
          h("dt", {}, t("dead.received")), h("dd", {}, raw(fmt.date(d.received_at)))),
        d.payload_text === null ? h("p", { class: "muted" }, t("dead.binary")) : "",
        text.length > PREVIEW_CHARS ? h("p", { class: "muted" }, t("dead.cut", { n: PREVIEW_CHARS })) : "",
        h("pre", { class: "payload", "data-raw": "" }, shown));
    }

    function draw() {
      const q = search.value.trim().toLowerCase();
      const chosen = letters.filter((d) => !q || d.topic.toLowerCase().includes(q));
      counts.replaceChildren(
        h("div", {}, h("h2", {}, t("dead.by_reason")), table([
          { label: "dead.reason", cell: ([r]) => label("deadreason", r) },
          { label: "dead.count", raw: true, cell: ([, n]) => n }], counted(chosen, (d) => d.reason),
        { rowAttrs: ([r]) => ({ class: "clickable", onclick: () => { reason.value = r; load(); } }) })),
        h("div", {}, h("h2", {}, t("dead.by_device")), table([
          { label: "dead.device", raw: true, cell: ([d]) => d },
          { label: "dead.count", raw: true, cell: ([, n]) => n }], counted(chosen, (d) => deviceOf(d.topic)),
        { rowAttrs: ([d]) => ({ class: "clickable", onclick: () => { search.value = d; draw(); } }) })));
      list.replaceChildren(table([
        { label: "dead.received", raw: true, cell: (d) => fmt.date(d.received_at) },
        { label: "dead.reason", cell: (d) => label("deadreason", d.reason) },
        { label: "dead.device", raw: true, cell: (d) => deviceOf(d.topic) },
        { label: "dead.topic", raw: true, cell: (d) => d.topic },
        { label: "dead.size", raw: true, cell: (d) => d.size },
        { label: "dead.detail", raw: true, cell: (d) => String(d.detail).slice(0, 60) },
      ], chosen, { rowAttrs: (d) => ({ class: "clickable", dataset: { dead: d.id }, onclick: () => show(d) }) }));
    }

    async function load() {
      const params = new URLSearchParams({ limit: limit.value });
      if (reason.value) params.set("reason", reason.value);
      letters = await api(`/api/deadletters?${params}`);
      const reasons = new Set([...reason.options].map((o) => o.value));
      for (const d of letters) {
        if (!reasons.has(d.reason)) {
          reason.append(option(d.reason, "deadreason"));
          reasons.add(d.reason);
        }
      }
      draw();
    }

    reason.addEventListener("change", load);
    limit.addEventListener("change", load);
    search.addEventListener("input", draw);
    await load();
  },
});
