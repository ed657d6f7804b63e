// Fleet: counts by link state, and every device with its three liveness levels; filters, search and sorting
// over the whole fleet; live. The table is windowed: only the rows in view (and a few around them) are in the
// DOM, between two spacer rows that keep the scroll height of the whole list, so 5,000 devices scroll as 50 do.
// A stream update to a device out of view changes its data only; it is drawn when scrolled to.
import { addMessages, api, fmt, h, registerPage, t } from "../app.js";
import { LINK_STATES, badge, clockText, dataBadge, linkOf } from "../devices.js";

const REFRESH_MS = 30000;
const BATCH_MS = 100;
const REFETCH_ALL_OVER = 50;
const OVERSCAN = 12;  // rows drawn above and below the visible ones, so a quick scroll shows no gap
const COLUMNS = [["device", "fleet.device"], ["node", "fleet.kind"], ["site", "fleet.site"], ["link", "level.link"],
  ["agent", "level.agent"], ["data", "level.data"], ["last_seen", "fleet.last_seen"], ["outbox", "fleet.outbox"],
  ["clock", "fleet.clock"], ["config", "fleet.config"]];
/** Sort keys by column (a column without one is not sortable). */
const SORTS = {
  device: (d) => d.device, node: (d) => d.node || "", site: (d) => d.site || "",
  link: (d) => LINK_STATES.indexOf(linkOf(d)), last_seen: (d) => String(d.last_seen || ""),
  outbox: (d) => d.heartbeat?.outbox_depth ?? -1, config: (d) => d.heartbeat?.config_version ?? -1,
};

addMessages({
  th: {
    "fleet.title": "อุปกรณ์ทั้งหมด", "fleet.all": "ทั้งหมด", "fleet.kind": "ชนิด", "fleet.site": "สถานที่",
    "fleet.state": "สถานะ", "fleet.search": "ค้นหารหัสหรือสถานที่", "fleet.device": "อุปกรณ์",
    "fleet.last_seen": "ติดต่อล่าสุด", "fleet.outbox": "ค้างส่ง", "fleet.clock": "นาฬิกา", "fleet.config": "รุ่นค่าตั้ง",
    "fleet.shown": "แสดง {shown} จาก {total} เครื่อง", "fleet.empty": "ยังไม่มีอุปกรณ์ในทะเบียน",
    "fleet.any_kind": "ทุกชนิด", "fleet.any_site": "ทุกสถานที่", "fleet.any_state": "ทุกสถานะ",
    "fleet.sort": "เรียงตาม{column}",
  },
  en: {
    "fleet.title": "Fleet", "fleet.all": "All", "fleet.kind": "Kind", "fleet.site": "Site",
    "fleet.state": "State", "fleet.search": "Search id or site", "fleet.device": "Device",
    "fleet.last_seen": "Last seen", "fleet.outbox": "Outbox", "fleet.clock": "Clock", "fleet.config": "Config",
    "fleet.shown": "{shown} of {total} devices shown", "fleet.empty": "No device in the registry yet",
    "fleet.any_kind": "Any kind", "fleet.any_site": "Any site", "fleet.any_state": "Any state",
    "fleet.sort": "Sort by {column}",
  },
});

function options(values, anyLabel, label = (v) => v) {
  return [h("option", { value: "" }, anyLabel), ...values.map((v) => h("option", { value: v, "data-raw": "" }, label(v)))];
}

function row(d, index) {
  const hb = d.heartbeat || {};
  return h("tr", { class: "clickable", "aria-rowindex": index + 2, dataset: { device: d.device, link: linkOf(d) },
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
    const sort = { key: SORTS[ctx.query.get("sort")] ? ctx.query.get("sort") : "device", dir: 1 };
    const counts = h("div", { class: "counts", id: "fleet-counts" });
    const kind = h("select", { id: "fleet-kind", "aria-label": t("fleet.kind") });
    const site = h("select", { id: "fleet-site", "aria-label": t("fleet.site") });
    const state = h("select", { id: "fleet-state", "aria-label": t("fleet.state") },
      options(LINK_STATES, t("fleet.any_state"), (s) => t(`link.${s}`)));
    const search = h("input", { id: "fleet-search", type: "search", placeholder: t("fleet.search"), maxlength: "64",
      value: filter.search, "aria-label": t("fleet.search") });
    const body = h("tbody");
    const shown = h("p", { class: "muted", id: "fleet-shown", "aria-live": "polite" });
    const headers = COLUMNS.map(([key, label]) => h("th", { scope: "col", dataset: { column: key } },
      SORTS[key] ? h("button", { type: "button", class: "sort", title: t("fleet.sort", { column: t(label) }),
        onclick: () => sortBy(key) }, t(label)) : t(label)));
    const table = h("table", { id: "fleet-table" }, h("thead", {}, h("tr", {}, ...headers)), body);
    // focusable, so that the keyboard scrolls the list (arrows, Page Up/Down, Home, End) past the rows drawn
    const wrap = h("div", { class: "table-wrap fleet-scroll", id: "fleet-scroll", tabindex: "0", role: "region",
      "aria-label": t("fleet.title") }, table);
    el.append(h("h1", {}, t("fleet.title")), counts,
      h("div", { class: "filters" }, kind, site, state, search), shown, wrap);

    function matches(d) {
      const text = filter.search.toLowerCase();
      return (!filter.kind || d.node === filter.kind) && (!filter.site || d.site === filter.site)
        && (!filter.state || linkOf(d) === filter.state)
        && (!text || d.device.toLowerCase().includes(text) || (d.site || "").toLowerCase().includes(text));
    }

    function order(a, b) {
      const x = SORTS[sort.key](a);
      const y = SORTS[sort.key](b);
      const c = x < y ? -1 : x > y ? 1 : 0;
      return c * sort.dir || (a.device < b.device ? -1 : a.device > b.device ? 1 : 0);
    }

    function fillSelect(select, values, anyLabel, current) {
      select.replaceChildren(...options(values, anyLabel));
      select.value = current;
    }

    let rows = [];  // every device that passes the filters, in order: the rendered ones are a window of it
    const position = new Map();  // device -> its index in rows
    const rowOf = new Map();  // device -> its <tr>, for the rendered ones only
    const drawn = { first: -1, last: -1 };
    let rowPx = 0;
    let scrollFrame = null;
    const stats = { total: 0, shown: 0, windows: 0, built: 0, rendered: 0, drawMs: 0 };
    window.nakhon.fleet = stats;
    ctx.cleanup(() => { if (window.nakhon.fleet === stats) delete window.nakhon.fleet; });

    function drawCounts() {
      const tally = Object.fromEntries(LINK_STATES.map((s) => [s, 0]));
      for (const d of devices.values()) tally[linkOf(d)] = (tally[linkOf(d)] || 0) + 1;
      counts.replaceChildren(h("button", { type: "button", class: "count", dataset: { state: "" },
        onclick: () => { filter.state = ""; state.value = ""; refilter({ top: true }); } }, h("b", {}, devices.size), t("fleet.all")),
      ...LINK_STATES.map((s) => h("button", { type: "button", class: `count ${s}`, dataset: { state: s },
        onclick: () => { filter.state = s; state.value = s; refilter({ top: true }); } }, h("b", {}, tally[s]), t(`link.${s}`))));
    }

    function spacer(px) {
      return h("tr", { class: "spacer", "aria-hidden": "true" }, h("td", { colspan: COLUMNS.length, style: `height:${px}px` }));
    }

    /** Draw the rows in view (force: even if the window did not move, as after a change of the list). */
    function drawWindow(force = false) {
      const head = table.tHead.offsetHeight;
      const view = wrap.clientHeight || window.innerHeight;
      const px = rowPx || 36;
      const first = Math.max(0, Math.floor((wrap.scrollTop - head) / px) - OVERSCAN);
      const last = Math.min(rows.length, Math.ceil((wrap.scrollTop + view - head) / px) + OVERSCAN);
      if (!force && first === drawn.first && last === drawn.last) return;
      Object.assign(drawn, { first, last });
      rowOf.clear();
      const visible = rows.slice(first, last).map((d, i) => {
        const tr = row(d, first + i);
        rowOf.set(d.device, tr);
        return tr;
      });
      body.replaceChildren(spacer(first * px), ...visible, spacer((rows.length - last) * px));
      stats.windows += 1;
      stats.built += visible.length;
      stats.rendered = visible.length;
      if (!rowPx && visible.length) {  // the real row height, once: the spacers and the window follow it
        rowPx = visible[0].getBoundingClientRect().height || 36;
        drawWindow(true);
      }
    }

    /** Filter and sort the whole fleet again, then draw the window. */
    function refilter({ top = false } = {}) {
      const started = performance.now();
      rows = [...devices.values()].filter(matches).sort(order);
      position.clear();
      rows.forEach((d, i) => position.set(d.device, i));
      table.setAttribute("aria-rowcount", String(rows.length + 1));
      if (top) wrap.scrollTop = 0;
      drawWindow(true);
      Object.assign(stats, { total: devices.size, shown: rows.length });
      shown.textContent = devices.size ? t("fleet.shown", { shown: rows.length, total: devices.size }) : t("fleet.empty");
      drawCounts();
      stats.drawMs = performance.now() - started;  // filter, sort and draw the window (for the benchmark)
    }

    function markSort() {
      for (const th of headers) {
        if (!SORTS[th.dataset.column]) continue;
        th.setAttribute("aria-sort", th.dataset.column === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none");
      }
    }

    function sortBy(key) {
      sort.dir = sort.key === key ? -sort.dir : 1;
      sort.key = key;
      markSort();
      refilter({ top: true });
    }

    function drawAll() {
      const unique = (key) => [...new Set([...devices.values()].map((d) => d[key]).filter(Boolean))].sort();
      fillSelect(kind, unique("node"), t("fleet.any_kind"), filter.kind);
      fillSelect(site, unique("site"), t("fleet.any_site"), filter.site);
      refilter();
    }

    function update(d) {
      const known = devices.get(d.device);
      devices.set(d.device, d);
      if (!known || known.node !== d.node || known.site !== d.site) {
        drawAll();
        return;
      }
      const at = position.get(d.device);
      const moves = at !== undefined && SORTS[sort.key](known) !== SORTS[sort.key](d);
      if (moves || matches(d) !== (at !== undefined)) {  // it joins, leaves or moves in the list
        refilter();
        return;
      }
      // the same place in the list: only its data changes, and its row if that is drawn
      if (at !== undefined) rows[at] = d;
      const old = rowOf.get(d.device);
      if (old) {
        const tr = row(d, at);
        old.replaceWith(tr);
        rowOf.set(d.device, tr);
        stats.built += 1;
      }
      drawCounts();
    }

    async function loadAll() {
      const list = await api("/api/devices");
      devices.clear();
      for (const d of list) devices.set(d.device, d);
      drawAll();
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
      select.addEventListener("change", () => { filter[key] = select.value; refilter({ top: true }); });
    }
    search.addEventListener("input", () => { filter.search = search.value; refilter({ top: true }); });
    const onScroll = () => {
      scrollFrame = scrollFrame || requestAnimationFrame(() => { scrollFrame = null; drawWindow(); });
    };
    wrap.addEventListener("scroll", onScroll, { passive: true });
    window.addEventListener("resize", onScroll);
    ctx.cleanup(() => window.removeEventListener("resize", onScroll));
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
    ctx.cleanup(() => { clearTimeout(timer); cancelAnimationFrame(scrollFrame); });
    markSort();
    await loadAll();
  },
});
