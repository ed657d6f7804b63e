// Citizen reports (GIS): the triage queue and its map, assign, resolve with a note, reopen, each report's history.
import { registerPage, addMessages, t, api, can, fmt, h, currentLang, notice } from "../app.js";
import { raw, table, ask, label, option, loadLeaflet, debounce } from "../ops.js";

const STATUS_COLOURS = { new: "#b42318", assigned: "#d4580b", resolved: "#1a7f37" };

addMessages({
  th: {
    "rep.title": "เรื่องร้องเรียนจากประชาชน", "rep.queue": "คิวคัดแยก", "rep.map": "แผนที่", "rep.status": "สถานะ",
    "rep.all": "ทั้งหมด", "rep.id": "เลขที่", "rep.category": "ประเภท", "rep.zone": "เขต", "rep.assignee": "ผู้รับผิดชอบ",
    "rep.created": "แจ้งเมื่อ", "rep.updated": "ปรับปรุงเมื่อ", "rep.device": "จุดแจ้ง", "rep.description": "รายละเอียด",
    "rep.actions": "การดำเนินการ", "rep.assign": "มอบหมาย", "rep.resolve": "ปิดเรื่อง", "rep.reopen": "เปิดเรื่องใหม่",
    "rep.note": "บันทึก", "rep.history": "ประวัติ", "rep.at": "เวลา", "rep.by": "โดย", "rep.pick": "เลือกเรื่องเพื่อดูรายละเอียด",
    "rep.count": "{n} เรื่อง", "rep.no_map": "แสดงแผนที่ไม่ได้",
    "repstatus.new": "รอรับเรื่อง", "repstatus.assigned": "กำลังดำเนินการ", "repstatus.resolved": "เสร็จสิ้น",
  },
  en: {
    "rep.title": "Citizen reports", "rep.queue": "Triage queue", "rep.map": "Map", "rep.status": "Status",
    "rep.all": "All", "rep.id": "No.", "rep.category": "Category", "rep.zone": "Zone", "rep.assignee": "Assignee",
    "rep.created": "Reported", "rep.updated": "Updated", "rep.device": "Reported at", "rep.description": "Description",
    "rep.actions": "Actions", "rep.assign": "Assign", "rep.resolve": "Resolve", "rep.reopen": "Reopen",
    "rep.note": "Note", "rep.history": "History", "rep.at": "At", "rep.by": "By", "rep.pick": "Pick a report to see it",
    "rep.count": "{n} reports", "rep.no_map": "The map could not be shown",
    "repstatus.new": "waiting", "repstatus.assigned": "in progress", "repstatus.resolved": "done",
  },
});

function category(p) {
  return (currentLang() === "en" ? p.category_en : p.category_th) || p.category;
}

registerPage("reports", {
  title: { th: "เรื่องร้องเรียน", en: "Citizen reports" },
  roles: ["gis", "viewer"],
  async render(el, ctx) {
    const status = h("select", { id: "rep-status" }, h("option", { value: "" }, t("rep.all")),
      ["new", "assigned", "resolved"].map((s) => option(s, "repstatus", s === (ctx.query.get("status") || "new"))));
    const count = h("span", { class: "muted" });
    const queue = h("div", { id: "rep-queue" });
    const mapBox = h("div", { id: "rep-map", class: "chart", style: "height: 360px" });
    const detail = h("div", { class: "card", id: "rep-detail" }, h("p", { class: "muted" }, t("rep.pick")));
    el.append(h("h1", {}, t("rep.title")), h("div", { class: "filters" }, h("label", {}, t("rep.status"), " ", status), count),
      h("div", { class: "grid" }, h("div", {}, h("h2", {}, t("rep.queue")), queue),
        h("div", {}, h("h2", {}, t("rep.map")), mapBox)), detail);
    let features = [];
    let selected = null;
    let map = null;
    let layer = null;

    async function change(f, next) {
      const fields = next === "assigned"
        ? [{ name: "assignee", label: "rep.assignee", required: true, maxlength: 100, value: f.properties.assignee || "" },
          { name: "note", label: "rep.note", type: "textarea" }]
        : [{ name: "note", label: "rep.note", type: "textarea", required: next === "resolved" }];
      const v = await ask(next === "assigned" ? "rep.assign" : next === "resolved" ? "rep.resolve" : "rep.reopen", fields);
      if (!v) return;
      const body = { status: next, ...(v.assignee ? { assignee: v.assignee } : {}), ...(v.note ? { note: v.note } : {}) };
      try {
        await api(`/api/gis/reports/${f.id}`, { method: "PATCH", body });
      } catch (err) {
        if (err.status !== 403 && err.status !== 401) notice(t("shell.failed", { detail: err.message }), "error");
        return;
      }
      selected = f.id;
      await load();
    }

    function actions(f) {
      if (!can("gis")) return "";
      const s = f.properties.status;
      const button = (next, key) => h("button", { type: "button", dataset: { act: next, report: f.id },
        onclick: (e) => { e.stopPropagation(); change(f, next); } }, t(key));
      return h("span", { class: "row" }, s !== "resolved" ? button("assigned", "rep.assign") : button("assigned", "rep.reopen"),
        s !== "resolved" ? button("resolved", "rep.resolve") : "");
    }

    async function show(id) {
      const [f, history] = await Promise.all([api(`/api/gis/reports/${id}`), api(`/api/gis/reports/${id}/history`)]);
      const p = f.properties;
      detail.replaceChildren(h("div", { class: "row" }, h("b", {}, raw(`#${f.id} ${category(p)}`)), label("repstatus", p.status), actions(f)),
        h("dl", { class: "kv" },
          h("dt", {}, t("rep.description")), h("dd", {}, raw(p.description)),
          h("dt", {}, t("rep.zone")), h("dd", {}, raw(p.zone)),
          h("dt", {}, t("rep.assignee")), h("dd", {}, raw(p.assignee)),
          h("dt", {}, t("rep.device")), h("dd", {}, raw(p.device)),
          h("dt", {}, t("rep.created")), h("dd", {}, raw(fmt.date(p.created_at)))),
        h("h2", {}, t("rep.history")),
        table([
          { label: "rep.at", raw: true, cell: (x) => fmt.date(x.at) },
          { label: "rep.status", cell: (x) => label("repstatus", x.status) },
          { label: "rep.assignee", raw: true, cell: (x) => x.assignee || "" },
          { label: "rep.note", raw: true, cell: (x) => x.note || "" },
          { label: "rep.by", raw: true, cell: (x) => x.by || "" }], history));
    }

    function select(id) {
      selected = id;
      show(id);
    }

    function drawMap() {
      if (!map) return;
      layer.clearLayers();
      for (const f of features) {
        const [lon, lat] = f.geometry.coordinates;
        window.L.circleMarker([lat, lon], { radius: f.id === selected ? 9 : 6, color: STATUS_COLOURS[f.properties.status],
          fillOpacity: 0.8 }).on("click", () => select(f.id)).addTo(layer);
      }
    }

    async function load() {
      const params = new URLSearchParams({ limit: "5000" });
      if (status.value) params.set("status", status.value);
      features = (await api(`/api/gis/reports?${params}`)).features;
      count.replaceChildren(t("rep.count", { n: features.length }));
      queue.replaceChildren(table([
        { label: "rep.id", raw: true, cell: (f) => f.id },
        { label: "rep.category", raw: true, cell: (f) => category(f.properties) },
        { label: "rep.zone", raw: true, cell: (f) => f.properties.zone || "" },
        { label: "rep.status", cell: (f) => label("repstatus", f.properties.status) },
        { label: "rep.assignee", raw: true, cell: (f) => f.properties.assignee || "" },
        { label: "rep.created", raw: true, cell: (f) => fmt.ago(f.properties.created_at) },
        { label: "rep.actions", cell: actions },
      ], features, { rowAttrs: (f) => ({ class: "clickable", dataset: { report: f.id }, onclick: () => select(f.id) }) }));
      drawMap();
      if (selected !== null) await show(selected);
    }

    async function startMap() {
      try {
        const L = await loadLeaflet();
        if (!mapBox.isConnected) return;
        map = L.map(mapBox, { attributionControl: false, preferCanvas: true }).setView([16.44, 102.83], 12);
        const settings = await api("/api/dashboard/settings").catch(() => ({}));
        if (settings.tiles) L.tileLayer(settings.tiles, { maxZoom: 19 }).addTo(map);
        const zones = await api("/api/gis/zones");
        const city = L.geoJSON(zones, { style: { color: "#0b5cad", weight: 1, fillOpacity: 0.05 } }).addTo(map);
        layer = L.featureGroup().addTo(map);
        if (city.getLayers().length) map.fitBounds(city.getBounds(), { padding: [10, 10] });
        ctx.cleanup(() => map.remove());
        drawMap();
      } catch (err) {
        mapBox.replaceChildren(h("p", { class: "muted" }, t("rep.no_map")));
      }
    }

    status.addEventListener("change", load);
    ctx.onStream("report", debounce(load, 200));
    await load();
    startMap();
  },
});
