// Fleet: counts by link state, and every device with its three liveness levels; filters and search; live.
import { addMessages, api, fmt, h, registerPage, t } from "../app.js";
import { LINK_STATES, badge, clockText, dataBadge, linkOf } from "../devices.js";

const REFRESH_MS = 30000;
const BATCH_MS = 100;
const REFETCH_ALL_OVER = 50;

addMessages({
  th: {
    "fleet.title": "อุปกรณ์ทั้งหมด", "fleet.all": "ทั้งหมด", "fleet.kind": "ชนิด", "fleet.site": "สถานที่",
    "fleet.state": "สถานะ", "fleet.search": "ค้นหารหัสหรือสถานที่", "fleet.device": "อุปกรณ์",
    "fleet.last_seen": "ติดต่อล่าสุด", "fleet.outbox": "ค้างส่ง", "fleet.clock": "นาฬิกา", "fleet.config": "รุ่นค่าตั้ง",
    "fleet.shown": "แสดง {shown} จาก {total} เครื่อง", "fleet.empty": "ยังไม่มีอุปกรณ์ในทะเบียน",
    "fleet.any_kind": "ทุกชนิด", "fleet.any_site": "ทุกสถานที่", "fleet.any_state": "ทุกสถานะ",
  },
  en: {
    "fleet.title": "Fleet", "fleet.all": "All", "fleet.kind": "Kind", "fleet.site": "Site",
    "fleet.state": "State", "fleet.search": "Search id or site", "fleet.device": "Device",
    "fleet.last_seen": "Last seen", "fleet.outbox": "Outbox", "fleet.clock": "Clock", "fleet.config": "Config",
    "fleet.shown": "{shown} of {total} devices shown", "fleet.empty": "No device in the registry yet",
    "fleet.any_kind": "Any kind", "fleet.any_site": "Any site", "fleet.any_state": "Any state",
  },
});

function options(values, anyLabel, label = (v) => v) {
  return [h("option", { value: "" }, anyLabel), ...values.map((v) => h("option", { value: v, "data-raw": "" }, label(v)))];
}

function row(d) {
  const hb = d.heartbeat || {};
  return h("tr", { class: "clickable", dataset: { device: d.device, link: linkOf(d) },
    onclick: () => { location.hash = `#/device/${encodeURIComponent(d.device)}`; } },
  h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.device)}`, "data-raw": "" }, d.device)),
  h("td", { "data-raw": "" }, d.node || "—"),
  h("td", { "data-raw": "" }, d.site || "—"),
  h("td", { class: "link" }, badge("link", linkOf(d))),
  h("td", {}, badge("agent", d.liveness?.agent || "unknown")),
  h("td", {}, dataBadge(d)),
  h("td", { title: fmt.date(d.last_seen) }, fmt.ago(d.last_seen)),
  h("td", {}, hb.outbox_depth ?? "—"),
  h("td", {}, clockText(d)),
  h("td", {}, hb.config_version ?? "—"));
}

registerPage("fleet", {
  title: { th: "อุปกรณ์", en: "Fleet" },
  async render(el, ctx) {
    const devices = new Map();
    const filter = { kind: ctx.query.get("kind") || "", site: ctx.query.get("site") || "",
      state: ctx.query.get("state") || "", search: ctx.query.get("q") || "" };
    const counts = h("div", { class: "counts", id: "fleet-counts" });
    const kind = h("select", { id: "fleet-kind", "aria-label": t("fleet.kind") });
    const site = h("select", { id: "fleet-site", "aria-label": t("fleet.site") });
    const state = h("select", { id: "fleet-state", "aria-label": t("fleet.state") },
      options(LINK_STATES, t("fleet.any_state"), (s) => t(`link.${s}`)));
    const search = h("input", { id: "fleet-search", type: "search", placeholder: t("fleet.search"), maxlength: "64",
      value: filter.search });
    const body = h("tbody");
    const shown = h("p", { class: "muted", id: "fleet-shown" });
    el.append(h("h1", {}, t("fleet.title")), counts,
      h("div", { class: "filters" }, kind, site, state, search), shown,
      h("div", { class: "table-wrap" }, h("table", { id: "fleet-table" },
        h("thead", {}, h("tr", {}, ...["fleet.device", "fleet.kind", "fleet.site", "level.link", "level.agent",
          "level.data", "fleet.last_seen", "fleet.outbox", "fleet.clock", "fleet.config"].map((k) => h("th", {}, t(k))))),
        body)));

    function matches(d) {
      const text = filter.search.toLowerCase();
      return (!filter.kind || d.node === filter.kind) && (!filter.site || d.site === filter.site)
        && (!filter.state || linkOf(d) === filter.state)
        && (!text || d.device.toLowerCase().includes(text) || (d.site || "").toLowerCase().includes(text));
    }

    function fillSelect(select, values, anyLabel, current) {
      select.replaceChildren(...options(values, anyLabel));
      select.value = current;
    }

    const rowOf = new Map();

    function drawCounts(all) {
      counts.replaceChildren(h("button", { type: "button", class: "count", dataset: { state: "" },
        onclick: () => { filter.state = ""; state.value = ""; draw(); } }, h("b", {}, all.length), t("fleet.all")),
      ...LINK_STATES.map((s) => h("button", { type: "button", class: `count ${s}`, dataset: { state: s },
        onclick: () => { filter.state = s; state.value = s; draw(); } },
      h("b", {}, all.filter((d) => linkOf(d) === s).length), t(`link.${s}`))));
    }

    function draw() {
      const all = [...devices.values()].sort((a, b) => a.device.localeCompare(b.device));
      drawCounts(all);
      const unique = (key) => [...new Set(all.map((d) => d[key]).filter(Boolean))].sort();
      fillSelect(kind, unique("node"), t("fleet.any_kind"), filter.kind);
      fillSelect(site, unique("site"), t("fleet.any_site"), filter.site);
      const rows = all.filter(matches);
      rowOf.clear();
      body.replaceChildren(...rows.map((d) => {
        const tr = row(d);
        rowOf.set(d.device, tr);
        return tr;
      }));
      shown.textContent = all.length ? t("fleet.shown", { shown: rows.length, total: all.length }) : t("fleet.empty");
    }

    function update(d) {
      const known = devices.get(d.device);
      devices.set(d.device, d);
      const old = rowOf.get(d.device);
      // a row that stays in the table is replaced where it is; anything else (new device, filter) redraws
      if (!known || !old || !matches(d) || known.node !== d.node || known.site !== d.site) {
        draw();
        return;
      }
      const tr = row(d);
      old.replaceWith(tr);
      rowOf.set(d.device, tr);
      drawCounts([...devices.values()]);
    }

    async function loadAll() {
      const list = await api("/api/devices");
      devices.clear();
      for (const d of list) devices.set(d.device, d);
      draw();
    }

    const pending = new Set();
    let timer = null;
    async function flush() {
      timer = null;
      const ids = [...pending];
      pending.clear();
      if (ids.length > REFETCH_ALL_OVER) {
        await loadAll();
        return;
      }
      const fresh = await Promise.all(ids.map((id) => api(`/api/devices/${encodeURIComponent(id)}`, { quiet: true })
        .catch(() => null)));
      for (const d of fresh) if (d) update(d);
    }

    for (const [select, key] of [[kind, "kind"], [site, "site"], [state, "state"]]) {
      select.addEventListener("change", () => { filter[key] = select.value; draw(); });
    }
    search.addEventListener("input", () => { filter.search = search.value; draw(); });
    ctx.onStream("device", (data) => {
      const known = devices.get(data.device);
      if (known && LINK_STATES.includes(data.state)) {  // show the new link state now, the details after the fetch
        const agent = data.state === "online" ? known.liveness?.agent : "down";
        update({ ...known, state: data.state, liveness: { ...known.liveness, link: data.state, agent } });
      }
      pending.add(data.device);
      timer = timer || setTimeout(flush, BATCH_MS);
    });
    ctx.onStream("resync", loadAll);
    ctx.every(REFRESH_MS, loadAll);
    ctx.cleanup(() => clearTimeout(timer));
    await loadAll();
  },
});
