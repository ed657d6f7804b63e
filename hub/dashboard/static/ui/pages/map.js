// Map: devices coloured by link state (clustered), zones, open citizen reports, buses with their recent track.
// No basemap unless the hub is started with --tiles URL or --pmtiles FILE (a local vector basemap, drawn by
// protomaps-leaflet from HTTP Range reads of the file): zones and layers are drawn on a plain background. With both,
// a layer switch offers each.
import { addMessages, api, h, loadScript, loadStyle, registerPage, t } from "../app.js";
import { LINK_STATES, STATE_COLOURS } from "../devices.js";

const TRACK_MINUTES = 30;
const WORST_FIRST = ["lost", "offline", "unknown", "online"];
const REPORT_COLOUR = "#d4580b";
const BUS_COLOUR = "#0b5cad";
const DEFAULT_VIEW = { lat: 16.43, lon: 102.83, zoom: 12 };  // Khon Kaen, until there is something to fit

addMessages({
  th: {
    "map.title": "แผนที่", "map.devices": "อุปกรณ์", "map.zones": "เขต", "map.reports": "เรื่องร้องเรียน",
    "map.buses": "รถโดยสารและเส้นทาง {minutes} นาทีล่าสุด",
    "map.no_basemap": "ไม่มีแผนที่ฐาน (ตั้งค่า --pmtiles หรือ --tiles เพื่อเพิ่ม)",
    "map.basemap_local": "แผนที่ฐานในเครื่อง", "map.basemap_tiles": "แผนที่ฐานจากเซิร์ฟเวอร์แผนที่",
    "map.open_device": "เปิดอุปกรณ์", "map.report": "เรื่องที่ {id}: {category}", "map.report_status.new": "ใหม่",
    "map.report_status.assigned": "มอบหมายแล้ว", "map.located": "มีพิกัด {n} เครื่อง",
  },
  en: {
    "map.title": "Map", "map.devices": "Devices", "map.zones": "Zones", "map.reports": "Citizen reports",
    "map.buses": "Buses and their last {minutes} minutes",
    "map.no_basemap": "No basemap (start the hub with --pmtiles or --tiles to add one)",
    "map.basemap_local": "Local basemap", "map.basemap_tiles": "Tile server basemap",
    "map.open_device": "Open device", "map.report": "Report {id}: {category}", "map.report_status.new": "new",
    "map.report_status.assigned": "assigned", "map.located": "{n} devices located",
  },
});

async function leaflet() {
  await Promise.all([loadStyle("/vendor/leaflet/leaflet.css"), loadStyle("/vendor/leaflet.markercluster/MarkerCluster.css"),
    loadStyle("/vendor/leaflet.markercluster/MarkerCluster.Default.css"), loadScript("/vendor/leaflet/leaflet.js")]);
  await loadScript("/vendor/leaflet.markercluster/leaflet.markercluster.js");
  return window.L;
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The basemaps the hub offers, by label: its local PMTiles file and its tile URL, each when configured. */
async function basemaps(L, settings, lang) {
  const layers = [];
  if (settings.basemap) {
    await loadScript("/vendor/protomaps-leaflet/protomaps-leaflet.js");
    const b = settings.basemap;
    layers.push([t("map.basemap_local"), window.protomapsL.leafletLayer({
      url: b.url, flavor: "light", lang, maxDataZoom: b.max_zoom, maxZoom: 19, attribution: escapeHtml(b.attribution) })]);
  }
  if (settings.tiles) layers.push([t("map.basemap_tiles"), L.tileLayer(settings.tiles, { maxZoom: 19 })]);
  return layers;
}

function clusterIcon(L, cluster) {
  const states = cluster.getAllChildMarkers().map((m) => m.options.state);
  const worst = WORST_FIRST.find((s) => states.includes(s)) || "unknown";
  const size = states.length < 100 ? 34 : states.length < 1000 ? 42 : 50;
  return L.divIcon({
    html: `<div style="background:${STATE_COLOURS[worst]}"><span>${states.length}</span></div>`,
    className: "marker-cluster state-cluster", iconSize: L.point(size, size),
  });
}

async function busTrack(device) {
  const since = new Date(Date.now() - TRACK_MINUTES * 60000).toISOString();
  const [lat, lon] = await Promise.all(["latitude", "longitude"].map((q) =>
    api(`/api/devices/${encodeURIComponent(device)}/readings?quantity=${q}&since=${since}&limit=2000`, { quiet: true })));
  const lons = new Map(lon.readings.map((r) => [r.ts, r.value]));
  return lat.readings.filter((r) => lons.has(r.ts)).map((r) => [r.value, lons.get(r.ts)]);
}

registerPage("map", {
  title: { th: "แผนที่", en: "Map" },
  async render(el, ctx) {
    const L = await leaflet();
    const [settings, devices, zones, ...reports] = await Promise.all([
      api("/api/dashboard/settings"), api("/ogc/collections/devices/items?limit=10000"), api("/api/gis/zones"),
      api("/api/gis/reports?status=new&limit=5000"), api("/api/gis/reports?status=assigned&limit=5000")]);
    const legend = h("div", { class: "legend" },
      ...LINK_STATES.map((s) => h("span", {}, h("span", { class: "dot", style: `background:${STATE_COLOURS[s]}` }), t(`link.${s}`))),
      h("span", {}, h("span", { class: "dot", style: `background:${REPORT_COLOUR}` }), t("map.reports")),
      h("span", {}, h("span", { class: "dot", style: `background:${BUS_COLOUR}` }), t("map.buses", { minutes: TRACK_MINUTES })));
    const box = h("div", { id: "map" });
    el.append(h("h1", {}, t("map.title")), legend,
      h("p", { class: "muted", id: "map-located" }, t("map.located", { n: devices.features.length }),
        settings.tiles || settings.basemap ? "" : ` · ${t("map.no_basemap")}`),
      box);
    const bases = await basemaps(L, settings, ctx.lang);
    const map = L.map(box, { preferCanvas: true, zoomControl: true, maxZoom: 19, minZoom: 3,
      attributionControl: bases.length > 0 });
    ctx.cleanup(() => map.remove());
    if (map.attributionControl) map.attributionControl.getContainer().dataset.raw = "";  // sources' names, as given
    if (bases.length) bases[0][1].addTo(map);
    if (bases.length > 1) L.control.layers(Object.fromEntries(bases), {}, { collapsed: false }).addTo(map);

    const zoneLayer = L.geoJSON(zones, {
      renderer: L.svg(),
      style: () => ({ color: "#12355b", weight: 2, fillColor: "#7fa7d9", fillOpacity: 0.15, className: "zone" }),
      onEachFeature: (f, layer) => layer.bindTooltip(h("span", { "data-raw": "" }, String(f.properties?.name_th
        && ctx.lang === "th" ? f.properties.name_th : f.properties?.name || f.properties?.name_en || f.id || "")),
      { sticky: true }),
    }).addTo(map);

    const cluster = L.markerClusterGroup({ chunkedLoading: true, showCoverageOnHover: false, maxClusterRadius: 50,
      iconCreateFunction: (c) => clusterIcon(L, c) });
    const markers = new Map();
    for (const f of devices.features) {
      const [lon, lat] = f.geometry.coordinates;
      const p = f.properties;
      const state = LINK_STATES.includes(p.state) ? p.state : "unknown";
      const marker = L.circleMarker([lat, lon], { radius: 7, weight: 1, color: "#fff", fillOpacity: 0.95,
        fillColor: STATE_COLOURS[state], state, device: p.device });
      marker.bindPopup(() => h("div", {}, h("b", { "data-raw": "" }, p.device), h("br"),
        h("span", { "data-raw": "" }, p.site || ""), h("br"), t(`link.${marker.options.state}`), h("br"),
        h("a", { href: `#/device/${encodeURIComponent(p.device)}` }, t("map.open_device"))));
      markers.set(p.device, marker);
      cluster.addLayer(marker);
    }
    cluster.addTo(map);

    const reportLayer = L.layerGroup().addTo(map);
    function addReport(id, lat, lon, category, status) {
      if (!Number.isFinite(lat) || !Number.isFinite(lon)) return;
      L.circleMarker([lat, lon], { radius: 6, color: REPORT_COLOUR, fillColor: REPORT_COLOUR, fillOpacity: 0.7, report: id })
        .bindPopup(() => h("div", {}, t("map.report", { id, category }), h("br"),
          t(`map.report_status.${status}`)))
        .addTo(reportLayer);
    }
    for (const f of reports.flatMap((r) => r.features)) {
      const [lon, lat] = f.geometry?.coordinates || [];
      addReport(f.properties.id ?? f.id, lat, lon, f.properties.category, f.properties.status);
    }

    const busLayer = L.layerGroup().addTo(map);
    for (const f of devices.features.filter((x) => x.properties.location_source === "gps")) {
      const track = await busTrack(f.properties.device).catch(() => []);
      if (track.length > 1) L.polyline(track, { color: BUS_COLOUR, weight: 3, opacity: 0.7 }).addTo(busLayer);
    }

    const bounds = L.latLngBounds([]);
    if (zones.features?.length) bounds.extend(zoneLayer.getBounds());
    if (markers.size) bounds.extend(cluster.getBounds());
    if (!bounds.isValid() && settings.basemap) {
      const [west, south, east, north] = settings.basemap.bounds;
      bounds.extend([[south, west], [north, east]]);
    }
    if (bounds.isValid()) map.fitBounds(bounds, { padding: [20, 20] });
    else map.setView([DEFAULT_VIEW.lat, DEFAULT_VIEW.lon], DEFAULT_VIEW.zoom);

    ctx.onStream("device", (data) => {
      const marker = markers.get(data.device);
      if (!marker) return;
      const state = LINK_STATES.includes(data.state) ? data.state : "unknown";
      marker.options.state = state;
      marker.setStyle({ fillColor: STATE_COLOURS[state] });
      cluster.refreshClusters(marker);
    });
    ctx.onStream("report", (r) => addReport(r.id, r.lat, r.lon, r.category, r.status));
    window.nakhon.map = { map, cluster, zones: zoneLayer, reports: reportLayer, buses: busLayer,
      basemaps: Object.fromEntries(bases.map(([label, layer]) => [label, layer])) };
    ctx.cleanup(() => { delete window.nakhon.map; });
  },
});
