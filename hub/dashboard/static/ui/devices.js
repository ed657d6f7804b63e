// What the fleet, map and device pages share: liveness labels and badges, and the device's heartbeat fields.
import { addMessages, h, t } from "./app.js";

addMessages({
  th: {
    "link.online": "ออนไลน์", "link.offline": "ออฟไลน์", "link.lost": "ขาดการติดต่อ", "link.unknown": "ไม่ทราบ",
    "agent.ok": "ปกติ", "agent.stale": "ล่าช้า", "agent.down": "ไม่ทำงาน", "agent.unknown": "ไม่ทราบ",
    "data.fresh": "สดใหม่", "data.stale": "ขาดช่วง", "data.unavailable": "ใช้งานไม่ได้", "data.no_data": "ไม่มีข้อมูล",
    "data.none": "ไม่มีเซนเซอร์", "data.summary": "{fresh}/{total} สดใหม่",
    "clock.synced": "{source} ตรงเวลา", "clock.unsynced": "{source} ไม่ตรงเวลา", "clock.unknown": "{source}",
    "level.link": "การเชื่อมต่อ", "level.agent": "เอเจนต์", "level.data": "ข้อมูล",
  },
  en: {
    "link.online": "online", "link.offline": "offline", "link.lost": "lost", "link.unknown": "unknown",
    "agent.ok": "ok", "agent.stale": "stale", "agent.down": "down", "agent.unknown": "unknown",
    "data.fresh": "fresh", "data.stale": "stale", "data.unavailable": "unavailable", "data.no_data": "no data",
    "data.none": "no sensors", "data.summary": "{fresh}/{total} fresh",
    "clock.synced": "{source} synchronised", "clock.unsynced": "{source} not synchronised", "clock.unknown": "{source}",
    "level.link": "Link", "level.agent": "Agent", "level.data": "Data",
  },
});

export const LINK_STATES = ["online", "offline", "lost", "unknown"];
export const STATE_COLOURS = { online: "#1a7f37", offline: "#b42318", lost: "#6e2a8c", unknown: "#8a8f98" };
const DATA_ORDER = ["unavailable", "stale", "no_data", "fresh"];

/** A coloured badge for one liveness level ("link", "agent", "data") and its value. */
export function badge(level, value) {
  return h("span", { class: `state ${value}`, dataset: { level, value } }, t(`${level}.${value}`));
}

/** The link state of a device view. */
export function linkOf(device) {
  return device.liveness?.link || "unknown";
}

/** The data level as one badge: the worst sensor state, with how many sensors are fresh. */
export function dataBadge(device) {
  const sensors = Object.values(device.liveness?.data || {});
  if (sensors.length === 0) return h("span", { class: "muted" }, t("data.none"));
  const worst = DATA_ORDER.find((s) => sensors.some((x) => x.state === s)) || "fresh";
  const fresh = sensors.filter((x) => x.state === "fresh").length;
  return h("span", { class: `state ${worst}`, dataset: { level: "data", value: worst }, title: t(`data.${worst}`) },
    t("data.summary", { fresh, total: sensors.length }));
}

/** The clock state from the heartbeat, in words. */
export function clockText(device) {
  const clock = device.heartbeat?.clock;
  if (!clock) return "—";
  const source = clock.source || "system";
  if (clock.synchronized === true) return t("clock.synced", { source });
  if (clock.synchronized === false) return t("clock.unsynced", { source });
  return t("clock.unknown", { source });
}

/** The device's location {lat, lon} from its heartbeat, or null. */
export function locationOf(device) {
  const loc = device.heartbeat?.location;
  return loc && Number.isFinite(loc.lat) && Number.isFinite(loc.lon) ? loc : null;
}
