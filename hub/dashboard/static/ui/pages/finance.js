// Finance: the day's summary per office and per kiosk, the day's ledger, receipts search with void / refund, pending
// PromptPay payments (expire now or cancel), cash counts and their CSV, and the daily receipt register as CSV and XLSX.
import { registerPage, addMessages, t, api, can, fmt, h, currentLang, notice } from "../app.js";
import { raw, table, ask, label, bangkokToday, debounce } from "../ops.js";

addMessages({
  th: {
    "fin.title": "การเงิน", "fin.day": "วันที่", "fin.summary": "สรุปรายวันตามหน่วยงาน", "fin.by_kiosk": "สรุปตามตู้",
    "fin.office": "หน่วยงาน", "fin.method": "วิธีชำระ", "fin.service": "บริการ", "fin.entry": "รายการ",
    "fin.entries": "จำนวนรายการ", "fin.amount": "จำนวนเงิน", "fin.total": "รวมทั้งวัน {amount}", "fin.kiosk": "ตู้",
    "fin.payments": "รับชำระ", "fin.reversals": "ยกเลิก/คืนเงิน", "fin.cash": "เงินสด", "fin.net": "สุทธิ",
    "fin.register": "ทะเบียนใบเสร็จรายวัน", "fin.register_csv": "ดาวน์โหลด CSV", "fin.register_xlsx": "ดาวน์โหลด XLSX",
    "fin.ledger": "บัญชีแยกประเภทของวัน", "fin.time": "เวลา", "fin.receipt": "เลขที่ใบเสร็จ", "fin.refers_to": "อ้างอิง",
    "fin.reason": "เหตุผล", "fin.by": "ผู้ทำรายการ",
    "fin.receipts": "ค้นหาใบเสร็จ", "fin.search": "เลขที่ใบเสร็จ ตู้ หรือบริการ", "fin.fiscal_year": "ปีงบประมาณ",
    "fin.paid_at": "ชำระเมื่อ", "fin.status": "สถานะ", "fin.valid": "ใช้ได้", "fin.actions": "การดำเนินการ",
    "fin.reverse": "ยกเลิก/คืนเงิน", "fin.reverse_title": "ยกเลิกหรือคืนเงินใบเสร็จ", "fin.kind": "ประเภท",
    "fin.reversed": "บันทึกรายการ {entry} ของใบเสร็จ {receipt} แล้ว", "fin.shown": "แสดง {n} จาก {total} ใบ",
    "fin.pending": "รายการพร้อมเพย์ที่รอชำระ", "fin.tx": "รายการ", "fin.created": "สร้างเมื่อ", "fin.expires": "หมดอายุ",
    "fin.cancel": "ยกเลิกรายการ", "fin.cancel_q": "ยกเลิกรายการพร้อมเพย์ {tx}? ตู้จะได้รับแจ้ง",
    "fin.expire": "ให้หมดอายุทันที", "fin.expire_q": "ให้รายการพร้อมเพย์ {tx} หมดอายุทันที? ตู้จะแจ้งว่าหมดเวลาชำระ",
    "fin.counts": "ตรวจนับเงินสด", "fin.counted": "นับได้ (บาท)", "fin.counted_amount": "นับได้", "fin.counted_by": "ผู้นับ", "fin.record": "บันทึกการนับ",
    "fin.ledger_cash": "ตามบัญชี", "fin.difference": "ผลต่าง", "fin.superseded": "ถูกแทนที่", "fin.latest": "ล่าสุด",
    "fin.counts_csv": "ดาวน์โหลด CSV การตรวจนับ", "fin.recorded": "บันทึกแล้ว ผลต่าง {diff}", "fin.at": "เวลา",
    "entry.payment": "รับชำระ", "entry.void": "ยกเลิก", "entry.refund": "คืนเงิน",
    "method.cash": "เงินสด", "method.promptpay": "พร้อมเพย์",
  },
  en: {
    "fin.title": "Finance", "fin.day": "Day", "fin.summary": "Day's summary by office", "fin.by_kiosk": "By kiosk",
    "fin.office": "Office", "fin.method": "Method", "fin.service": "Service", "fin.entry": "Entry",
    "fin.entries": "Entries", "fin.amount": "Amount", "fin.total": "Day total {amount}", "fin.kiosk": "Kiosk",
    "fin.payments": "Payments", "fin.reversals": "Voids/refunds", "fin.cash": "Cash", "fin.net": "Net",
    "fin.register": "Daily receipt register", "fin.register_csv": "Download CSV", "fin.register_xlsx": "Download XLSX",
    "fin.ledger": "The day's ledger", "fin.time": "Time", "fin.receipt": "Receipt no.", "fin.refers_to": "Refers to",
    "fin.reason": "Reason", "fin.by": "By",
    "fin.receipts": "Receipts search", "fin.search": "Receipt no., kiosk or service", "fin.fiscal_year": "Fiscal year",
    "fin.paid_at": "Paid", "fin.status": "Status", "fin.valid": "valid", "fin.actions": "Actions",
    "fin.reverse": "Void/refund", "fin.reverse_title": "Void or refund a receipt", "fin.kind": "Kind",
    "fin.reversed": "{entry} of receipt {receipt} recorded", "fin.shown": "{n} of {total} receipts shown",
    "fin.pending": "Pending PromptPay payments", "fin.tx": "Transaction", "fin.created": "Created", "fin.expires": "Expires",
    "fin.cancel": "Cancel payment", "fin.cancel_q": "Cancel PromptPay payment {tx}? The kiosk is told.",
    "fin.expire": "Expire now", "fin.expire_q": "Expire PromptPay payment {tx} now? The kiosk shows its time ran out.",
    "fin.counts": "Cash counts", "fin.counted": "Counted (baht)", "fin.counted_amount": "Counted", "fin.counted_by": "Counted by", "fin.record": "Record count",
    "fin.ledger_cash": "Ledger", "fin.difference": "Difference", "fin.superseded": "superseded", "fin.latest": "latest",
    "fin.counts_csv": "Download the counts CSV", "fin.recorded": "Recorded, difference {diff}", "fin.at": "At",
    "entry.payment": "payment", "entry.void": "void", "entry.refund": "refund",
    "method.cash": "cash", "method.promptpay": "PromptPay",
  },
});

const SHOWN_RECEIPTS = 200;

function byKiosk(entries) {
  const kiosks = new Map();
  for (const e of entries) {
    const k = kiosks.get(e.device) || { device: e.device, payments: 0, reversals: 0, cash: 0, net: 0 };
    if (e.entry === "payment") k.payments += 1;
    else k.reversals += 1;
    if (e.method === "cash") k.cash += e.amount_satang;
    k.net += e.amount_satang;
    kiosks.set(e.device, k);
  }
  return [...kiosks.values()].sort((a, b) => a.device.localeCompare(b.device));
}

registerPage("finance", {
  title: { th: "การเงิน", en: "Finance" },
  roles: ["finance", "viewer"],
  async render(el, ctx) {
    const day = h("input", { type: "date", id: "fin-day", value: ctx.query.get("day") || bangkokToday() });
    const summaryBox = h("div", { id: "fin-summary" });
    const kioskBox = h("div", { id: "fin-kiosks" });
    const register = h("p", { class: "row", id: "fin-register" });
    const ledgerBox = h("div", { id: "fin-ledger" });
    const search = h("input", { type: "search", id: "fin-search", placeholder: t("fin.search"), maxlength: "64" });
    const receiptsBox = h("div", { id: "fin-receipts" });
    const pendingBox = h("div", { id: "fin-pending" });
    const countsBox = h("div", { id: "fin-counts" });
    const countForm = h("form", { class: "row", id: "fin-count-form" });
    let receipts = [];
    el.append(h("h1", {}, t("fin.title")), h("div", { class: "filters" }, h("label", {}, t("fin.day"), " ", day)),
      h("h2", {}, t("fin.summary")), summaryBox, h("h2", {}, t("fin.by_kiosk")), kioskBox,
      h("h2", {}, t("fin.register")), register, h("h2", {}, t("fin.ledger")), ledgerBox,
      h("h2", {}, t("fin.receipts")), h("div", { class: "filters" }, search), receiptsBox,
      h("h2", {}, t("fin.pending")), pendingBox, h("h2", {}, t("fin.counts")), can("finance") ? countForm : "", countsBox);

    async function reverse(r) {
      const v = await ask("fin.reverse_title", [
        { name: "entry", label: "fin.kind", options: [["void", "entry.void"], ["refund", "entry.refund"]], value: "void" },
        { name: "reason", label: "fin.reason", type: "textarea", required: true, minlength: 3, maxlength: 500 }],
      { confirm: "fin.reverse", danger: true, note: raw(`${r.receipt_no} · ${fmt.baht(r.amount_satang)}`) });
      if (!v) return;
      try {
        await api(`/api/finance/receipts/${encodeURIComponent(r.receipt_no)}/reverse`, { method: "POST", body: v });
      } catch (err) {
        if (err.status !== 403 && err.status !== 401) notice(t("shell.failed", { detail: err.message }), "error");
        return;
      }
      notice(t("fin.reversed", { entry: t(`entry.${v.entry}`), receipt: r.receipt_no }));
      await Promise.all([loadDay(), loadReceipts()]);
    }

    function drawReceipts() {
      const q = search.value.trim().toLowerCase();
      const chosen = receipts.filter((r) => !q || [r.receipt_no, r.device, r.service, r.office]
        .some((v) => String(v).toLowerCase().includes(q))).reverse();
      receiptsBox.replaceChildren(
        h("p", { class: "muted" }, t("fin.shown", { n: Math.min(chosen.length, SHOWN_RECEIPTS), total: chosen.length })),
        table([
          { label: "fin.receipt", raw: true, cell: (r) => r.receipt_no },
          { label: "fin.office", raw: true, cell: (r) => r.office },
          { label: "fin.fiscal_year", raw: true, cell: (r) => r.fiscal_year },
          { label: "fin.paid_at", raw: true, cell: (r) => fmt.date(r.paid_at) },
          { label: "fin.kiosk", raw: true, cell: (r) => r.device },
          { label: "fin.service", raw: true, cell: (r) => r.service },
          { label: "fin.method", cell: (r) => label("method", r.method) },
          { label: "fin.amount", raw: true, cell: (r) => fmt.baht(r.amount_satang) },
          { label: "fin.status", cell: (r) => (r.reversed_by ? [label("entry", r.reversed_by), " · ", raw(r.reversal_reason)] : t("fin.valid")) },
          { label: "fin.actions", cell: (r) => (can("finance") && !r.reversed_by
            ? h("button", { type: "button", class: "danger", dataset: { void: r.receipt_no }, onclick: () => reverse(r) }, t("fin.reverse"))
            : "") },
        ], chosen.slice(0, SHOWN_RECEIPTS), { rowAttrs: (r) => ({ dataset: { receipt: r.receipt_no } }) }));
    }

    async function loadReceipts() {
      receipts = await api("/api/finance/receipts?limit=100000");
      drawReceipts();
    }

    async function endPayment(p, action) {
      const v = await ask(`fin.${action}`, [], { confirm: `fin.${action}`, danger: true,
        note: t(`fin.${action}_q`, { tx: p.tx_id }) });
      if (!v) return;
      try {
        await api(`/api/finance/payments/${encodeURIComponent(p.tx_id)}/${action}`, { method: "POST" });
      } catch (err) {
        if (err.status !== 403 && err.status !== 401) notice(t("shell.failed", { detail: err.message }), "error");
      }
      await loadPending();
    }

    async function loadPending() {
      const pending = await api("/api/finance/payments?status=pending&limit=1000");
      pendingBox.replaceChildren(table([
        { label: "fin.tx", raw: true, cell: (p) => p.tx_id },
        { label: "fin.kiosk", raw: true, cell: (p) => p.device },
        { label: "fin.service", raw: true, cell: (p) => p.service },
        { label: "fin.amount", raw: true, cell: (p) => fmt.baht(p.amount_satang) },
        { label: "fin.created", raw: true, cell: (p) => fmt.date(p.created_at) },
        { label: "fin.expires", raw: true, cell: (p) => fmt.date(p.expires_at) },
        { label: "fin.actions", cell: (p) => (can("finance")
          ? [h("button", { type: "button", dataset: { expire: p.tx_id }, onclick: () => endPayment(p, "expire") },
              t("fin.expire")), " ",
            h("button", { type: "button", dataset: { cancel: p.tx_id }, onclick: () => endPayment(p, "cancel") },
              t("fin.cancel"))] : "") },
      ], pending));
    }

    async function loadDay() {
      const d = day.value || bangkokToday();
      const [summary, entries, counts] = await Promise.all([api(`/api/finance/summary?day=${d}`),
        api(`/api/finance/ledger?day=${d}&limit=100000`), api(`/api/finance/reconciliations?day=${d}`)]);
      summaryBox.replaceChildren(h("p", {}, h("b", {}, t("fin.total", { amount: fmt.baht(summary.total_satang) }))),
        table([
          { label: "fin.office", raw: true, cell: (r) => r.office },
          { label: "fin.method", cell: (r) => label("method", r.method) },
          { label: "fin.service", raw: true, cell: (r) => r.service },
          { label: "fin.entry", cell: (r) => label("entry", r.entry) },
          { label: "fin.entries", raw: true, cell: (r) => r.entries },
          { label: "fin.amount", raw: true, cell: (r) => fmt.baht(r.amount_satang) }], summary.rows));
      kioskBox.replaceChildren(table([
        { label: "fin.kiosk", raw: true, cell: (k) => k.device },
        { label: "fin.payments", raw: true, cell: (k) => k.payments },
        { label: "fin.reversals", raw: true, cell: (k) => k.reversals },
        { label: "fin.cash", raw: true, cell: (k) => fmt.baht(k.cash) },
        { label: "fin.net", raw: true, cell: (k) => fmt.baht(k.net) }], byKiosk(entries)));
      const lang = currentLang();
      register.replaceChildren(
        h("a", { href: `/api/finance/register.csv?day=${d}&lang=${lang}`, download: "", id: "fin-register-csv" }, t("fin.register_csv")),
        h("a", { href: `/api/finance/register.xlsx?day=${d}&lang=${lang}`, download: "", id: "fin-register-xlsx" }, t("fin.register_xlsx")));
      const numbers = new Map(entries.map((e) => [e.id, e.receipt_no]));
      ledgerBox.replaceChildren(table([
        { label: "fin.time", raw: true, cell: (e) => fmt.date(e.at, { timeStyle: "medium" }) },
        { label: "fin.entry", cell: (e) => label("entry", e.entry) },
        { label: "fin.receipt", raw: true, cell: (e) => e.receipt_no || "" },
        { label: "fin.refers_to", raw: true, cell: (e) => (e.refers_to ? numbers.get(e.refers_to) || e.refers_to : "") },
        { label: "fin.kiosk", raw: true, cell: (e) => e.device },
        { label: "fin.method", cell: (e) => label("method", e.method) },
        { label: "fin.amount", raw: true, cell: (e) => fmt.baht(e.amount_satang) },
        { label: "fin.reason", raw: true, cell: (e) => e.reason || "" },
        { label: "fin.by", raw: true, cell: (e) => e.by_user || "" },
      ], entries, { rowAttrs: (e) => ({ dataset: { entry: e.id, kind: e.entry } }) }));
      countsBox.replaceChildren(table([
        { label: "fin.kiosk", raw: true, cell: (c) => c.device },
        { label: "fin.counted_amount", raw: true, cell: (c) => fmt.baht(c.counted_satang) },
        { label: "fin.ledger_cash", raw: true, cell: (c) => fmt.baht(c.ledger_satang) },
        { label: "fin.difference", raw: true, cell: (c) => fmt.baht(c.counted_satang - c.ledger_satang) },
        { label: "fin.counted_by", raw: true, cell: (c) => c.counted_by },
        { label: "fin.at", raw: true, cell: (c) => fmt.date(c.at) },
        { label: "fin.status", cell: (c) => (c.superseded ? t("fin.superseded") : t("fin.latest")) },
      ], counts), h("p", {}, h("a", { href: `/api/finance/reconciliation.csv?day=${d}`, download: "", id: "fin-counts-csv" },
        t("fin.counts_csv"))));
      const kiosks = [...new Set([...entries.map((e) => e.device), ...counts.map((c) => c.device)])].sort();
      drawCountForm(kiosks);
    }

    function drawCountForm(kiosks) {
      const device = h("input", { name: "device", required: true, maxlength: "64", list: "fin-kiosk-list", value: kiosks[0] || "" });
      const counted = h("input", { name: "counted", type: "number", min: "0", step: "0.01", required: true });
      const by = h("input", { name: "counted_by", required: true, maxlength: "100" });
      countForm.replaceChildren(
        h("datalist", { id: "fin-kiosk-list" }, kiosks.map((k) => h("option", { value: k }))),
        h("label", {}, t("fin.kiosk"), " ", device), h("label", {}, t("fin.counted"), " ", counted),
        h("label", {}, t("fin.counted_by"), " ", by), h("button", { type: "submit", class: "primary" }, t("fin.record")));
      countForm.onsubmit = async (event) => {
        event.preventDefault();
        try {
          const result = await api("/api/finance/reconciliations", { method: "POST", body: {
            device: device.value.trim(), day: day.value || bangkokToday(),
            counted_satang: Math.round(Number(counted.value) * 100), counted_by: by.value.trim() } });
          notice(t("fin.recorded", { diff: fmt.baht(result.difference_satang) }));
        } catch (err) {
          if (err.status !== 403 && err.status !== 401) notice(t("shell.failed", { detail: err.message }), "error");
          return;
        }
        await loadDay();
      };
    }

    day.addEventListener("change", loadDay);
    search.addEventListener("input", debounce(drawReceipts, 100));
    ctx.every(30_000, () => Promise.all([loadDay(), loadPending()]).catch(() => null));
    await Promise.all([loadDay(), loadReceipts(), loadPending()]);
  },
});
