// The dashboard shell: sign-in, navigation, Thai/English messages, the API client, the live stream, the
// critical-alarm banner and hash routing. Pages are modules in ./pages/<id>.js that call registerPage() and
// addMessages() when imported; docs/dashboard.md describes the contract.

const PAGES = ["fleet", "map", "alarms", "deadletters", "finance", "reports", "audit", "users", "device"];
const LANGS = ["th", "en"];
const BEEP_EVERY_MS = 3000;
const STREAM_RETRY_MS = 3000;

const pages = new Map();
const messages = { th: {}, en: {} };
const produced = new Set();
const missing = new Set();
const streamHandlers = new Map();
const critical = new Map();
let lang = localStorage.getItem("nakhon.lang") === "en" ? "en" : "th";
let me = null;
let leave = null;
let source = null;
let streamTimer = null;
let beepTimer = null;
let audio = null;
let started = false;

/** What tests and the console can inspect: the texts t() produced, keys missing in a language, beeps. */
window.nakhon = { produced, missing, beeps: 0, ticks: 0, messages, streamOpen: false };

// ---- messages -------------------------------------------------------------------------------------------

/** Add a page's messages: {th: {key: text}, en: {key: text}}; a key missing in one language is reported. */
export function addMessages(table) {
  for (const l of LANGS) Object.assign(messages[l], table[l] || {});
  for (const l of LANGS) {
    const other = l === "th" ? "en" : "th";
    for (const key of Object.keys(table[other] || {})) if (!(key in messages[l])) missing.add(`${l}:${key}`);
  }
}

/** The message `key` in the current language, with {name} placeholders filled from `vars`. */
export function t(key, vars = {}) {
  let text = messages[lang][key];
  if (text === undefined) {
    missing.add(`${lang}:${key}`);
    text = messages[lang === "th" ? "en" : "th"][key] ?? key;
  }
  text = text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
  produced.add(text);
  return text;
}

/** The current language, "th" or "en". */
export function currentLang() {
  return lang;
}

/** Switch the language (kept in localStorage) and draw the page again. */
export function setLang(next) {
  lang = next === "en" ? "en" : "th";
  localStorage.setItem("nakhon.lang", lang);
  document.documentElement.lang = lang;
  if (me) {
    drawChrome();
    route();
  } else {
    showSignIn();
  }
}

function pick(pair) {
  const text = pair?.[lang] ?? pair?.th ?? "";
  produced.add(text);
  return text;
}

addMessages({
  th: {
    "shell.brand": "นคร — ศูนย์ปฏิบัติการ", "shell.menu": "เมนู", "shell.lang": "English", "shell.signout": "ออกจากระบบ",
    "shell.who": "{name} ({roles})", "shell.no_page": "ไม่พบหน้านี้", "shell.not_for_you": "บทบาทของคุณไม่มีสิทธิ์ดูหน้านี้",
    "shell.forbidden": "ไม่มีสิทธิ์ทำรายการนี้: {detail}", "shell.failed": "ทำรายการไม่สำเร็จ: {detail}",
    "shell.page_failed": "โหลดหน้านี้ไม่สำเร็จ: {detail}", "shell.live": "สด", "shell.reconnecting": "กำลังเชื่อมต่อใหม่",
    "shell.loading": "กำลังโหลด…", "shell.dismiss": "ปิด", "shell.confirm": "ยืนยัน", "shell.cancel": "ยกเลิก",
    "banner.critical": "สัญญาณเตือนวิกฤต {n} รายการ", "banner.open": "ดูสัญญาณเตือน", "banner.mute": "ปิดเสียง",
    "banner.unmute": "เปิดเสียง",
    "signin.title": "เข้าสู่ระบบ", "signin.name": "ชื่อผู้ใช้", "signin.password": "รหัสผ่าน", "signin.submit": "เข้าสู่ระบบ",
    "signin.wrong": "ชื่อผู้ใช้หรือรหัสผ่านไม่ถูกต้อง", "signin.ended": "หมดเวลาการใช้งาน กรุณาเข้าสู่ระบบอีกครั้ง",
    "signin.failed": "เข้าสู่ระบบไม่สำเร็จ: {detail}",
    "role.viewer": "ผู้ดู", "role.operator": "ผู้ปฏิบัติการ", "role.finance": "การเงิน", "role.gis": "ภูมิสารสนเทศ",
    "role.admin": "ผู้ดูแลระบบ", "map.zoom_in": "ขยาย", "map.zoom_out": "ย่อ",
  },
  en: {
    "shell.brand": "Nakhon — operations", "shell.menu": "Menu", "shell.lang": "ไทย", "shell.signout": "Sign out",
    "shell.who": "{name} ({roles})", "shell.no_page": "No such page", "shell.not_for_you": "Your roles do not include this page",
    "shell.forbidden": "Not allowed: {detail}", "shell.failed": "That did not work: {detail}",
    "shell.page_failed": "The page could not load: {detail}", "shell.live": "live", "shell.reconnecting": "reconnecting",
    "shell.loading": "Loading…", "shell.dismiss": "Dismiss", "shell.confirm": "Confirm", "shell.cancel": "Cancel",
    "banner.critical": "{n} critical alarm(s)", "banner.open": "Open alarms", "banner.mute": "Mute",
    "banner.unmute": "Unmute",
    "signin.title": "Sign in", "signin.name": "User name", "signin.password": "Password", "signin.submit": "Sign in",
    "signin.wrong": "Wrong name or password", "signin.ended": "Your session has ended: please sign in again",
    "signin.failed": "Sign-in failed: {detail}",
    "role.viewer": "viewer", "role.operator": "operator", "role.finance": "finance", "role.gis": "GIS",
    "role.admin": "admin", "map.zoom_in": "Zoom in", "map.zoom_out": "Zoom out",
  },
});

// ---- DOM and formatting helpers -------------------------------------------------------------------------

/** Build an element: h("a", {href, class, onclick, dataset: {...}}, "text", child, [more]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function toDate(ts) {
  if (ts instanceof Date) return ts;
  if (typeof ts === "number") return new Date(ts < 1e12 ? ts * 1000 : ts);
  return new Date(ts);
}

function locale() {
  return lang === "th" ? "th-TH-u-ca-buddhist" : "en-GB";
}

/** Formatting in the current language: dates in Bangkok time (Buddhist era in Thai), baht, relative times. */
const formats = {
  date(ts, options = { dateStyle: "medium", timeStyle: "medium" }) {
    if (ts === null || ts === undefined || ts === "") return "—";
    const d = toDate(ts);
    if (Number.isNaN(d.getTime())) return String(ts);
    return new Intl.DateTimeFormat(locale(), { timeZone: "Asia/Bangkok", ...options }).format(d);
  },
  baht(satang) {
    if (satang === null || satang === undefined) return "—";
    return new Intl.NumberFormat(lang === "th" ? "th-TH" : "en-GB", { style: "currency", currency: "THB" })
      .format(Number(satang) / 100);
  },
  ago(ts) {
    if (ts === null || ts === undefined || ts === "") return "—";
    const seconds = (toDate(ts).getTime() - Date.now()) / 1000;
    const rtf = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });
    const units = [["year", 31536000], ["month", 2592000], ["day", 86400], ["hour", 3600], ["minute", 60]];
    for (const [unit, size] of units) if (Math.abs(seconds) >= size) return rtf.format(Math.round(seconds / size), unit);
    return rtf.format(Math.round(seconds), "second");
  },
  number(value, digits = 1) {
    if (value === null || value === undefined) return "—";
    return new Intl.NumberFormat(lang === "th" ? "th-TH" : "en-GB", { maximumFractionDigits: digits }).format(value);
  },
};

/** Formatting in the current language (each result counts as translated text for the label check). */
export const fmt = Object.fromEntries(Object.entries(formats).map(([name, format]) => [name, (...args) => {
  const text = format(...args);
  produced.add(text);
  return text;
}]));

/** Show a message above the page (kind "error" or "info"); it stays until dismissed or the page changes. */
export function notice(text, kind = "info") {
  const box = document.getElementById("notice");
  box.className = kind;
  box.replaceChildren(h("span", {}, text), " ",
    h("button", { type: "button", onclick: () => { box.hidden = true; } }, t("shell.dismiss")));
  box.hidden = false;
}

/** Ask before an action: a modal dialog with the text; resolves true when confirmed. */
export function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm" });
    const close = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    dialog.append(h("p", {}, text), h("div", { class: "row" },
      h("button", { type: "button", class: "primary", "data-confirm": "yes", onclick: () => close(true) }, t("shell.confirm")),
      h("button", { type: "button", onclick: () => close(false) }, t("shell.cancel"))));
    dialog.addEventListener("cancel", () => close(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

const loaded = new Map();
let leafletLibrary;

function translateLeaflet() {
  const zoom = leafletLibrary?.Control?.Zoom;
  if (zoom) Object.assign(zoom.prototype.options, { zoomInTitle: t("map.zoom_in"), zoomOutTitle: t("map.zoom_out") });
}

// Leaflet (loaded by whichever page first needs a map) gets its control labels from the message table
Object.defineProperty(window, "L", {
  configurable: true,
  get: () => leafletLibrary,
  set: (value) => {
    leafletLibrary = value;
    translateLeaflet();
  },
});

/** Load a vendored script (a classic one, like Leaflet) once; resolves when it has run. */
export function loadScript(src) {
  if (!loaded.has(src)) {
    loaded.set(src, new Promise((resolve, reject) => {
      document.head.append(h("script", { src, onload: resolve, onerror: () => reject(new Error(`cannot load ${src}`)) }));
    }));
  }
  return loaded.get(src);
}

/** Load a vendored style sheet once. */
export function loadStyle(href) {
  if (!loaded.has(href)) {
    loaded.set(href, new Promise((resolve, reject) => {
      document.head.append(h("link", { rel: "stylesheet", href, onload: resolve,
        onerror: () => reject(new Error(`cannot load ${href}`)) }));
    }));
  }
  return loaded.get(href);
}

// ---- the API --------------------------------------------------------------------------------------------

/** An API answer other than 2xx. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

function detailOf(body, status) {
  const detail = body && typeof body === "object" ? body.detail : body;
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return detail ? String(detail) : `HTTP ${status}`;
}

/** Call the hub's API with JSON; changes carry the CSRF token. 401 shows the sign-in page, 403 a message.
 *  `raw: true` returns the Response (for CSV and XLSX downloads). */
export async function api(path, { method = "GET", body, raw = false, quiet = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!["GET", "HEAD"].includes(method) && me?.csrf) headers[me.csrfHeader] = me.csrf;
  const response = await fetch(path, {
    method, headers, signal, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const answer = type.includes("json") ? await response.json().catch(() => null) : await response.text();
    const error = new ApiError(response.status, detailOf(answer, response.status));
    if (response.status === 401) showSignIn(t("signin.ended"));
    else if (response.status === 403 && !quiet) notice(t("shell.forbidden", { detail: error.detail }), "error");
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return type.includes("json") ? response.json() : response.text();
}

/** The signed-in user: {name, roles}. */
export function session() {
  return me ? { name: me.name, roles: [...me.roles] } : null;
}

/** Whether the signed-in user holds `role` (admin holds every role). */
export function can(role) {
  return Boolean(me && (me.roles.includes("admin") || me.roles.includes(role)));
}

// ---- the live stream ------------------------------------------------------------------------------------

/** Call fn(data, event) for every `type` message of /api/stream ("device", "event", "alarm", "report"); the
 *  type "resync" fires when the stream had to be opened again and may have missed changes. Returns an unsubscribe. */
export function onStream(type, fn) {
  if (!streamHandlers.has(type)) {
    streamHandlers.set(type, new Set());
    if (source && type !== "resync") source.addEventListener(type, dispatch);
  }
  streamHandlers.get(type).add(fn);
  return () => streamHandlers.get(type)?.delete(fn);
}

function dispatch(event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  for (const fn of [...(streamHandlers.get(event.type) || [])]) {
    try {
      fn(data, event);
    } catch (err) {
      console.error("stream handler failed", err);
    }
  }
}

function streamState(open) {
  window.nakhon.streamOpen = open;
  const dot = document.getElementById("live");
  if (dot) {
    dot.className = open ? "live on" : "live off";
    dot.textContent = open ? t("shell.live") : t("shell.reconnecting");
  }
}

function openStream(resync = false) {
  closeStream();
  // the browser resumes with Last-Event-ID after a dropped connection; a new EventSource cannot, hence "resync"
  source = new EventSource("/api/stream");
  for (const type of streamHandlers.keys()) if (type !== "resync") source.addEventListener(type, dispatch);
  source.addEventListener("open", () => {
    streamState(true);
    if (resync) for (const fn of [...(streamHandlers.get("resync") || [])]) fn();
    resync = false;
  });
  source.addEventListener("error", () => {
    streamState(false);
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      streamTimer = setTimeout(reopenStream, STREAM_RETRY_MS);
    }
  });
}

async function reopenStream() {
  try {
    await api("/api/session", { quiet: true });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;  // the sign-in page is showing
  }
  if (me) openStream(true);
}

function closeStream() {
  clearTimeout(streamTimer);
  if (source) source.close();
  source = null;
}

// ---- critical-alarm banner ------------------------------------------------------------------------------

function muted() {
  return localStorage.getItem("nakhon.mute") === "1";
}

function beep() {
  window.nakhon.ticks += 1;
  if (muted() || critical.size === 0) return;
  window.nakhon.beeps += 1;
  try {
    audio = audio || new AudioContext();
    if (audio.state === "suspended") audio.resume();
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = "square";
    osc.frequency.value = 880;
    gain.gain.value = 0.08;
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.25);
  } catch (err) {
    console.warn("no sound for the alarm banner", err);
  }
}

function alarmChanged(data) {
  const alarm = data.alarm || data;
  if (!alarm || alarm.severity !== "critical") return;
  if (alarm.state === "active") critical.set(alarm.id, alarm);
  else critical.delete(alarm.id);
  drawBanner();
}

function drawBanner() {
  const banner = document.getElementById("banner");
  if (!me || critical.size === 0) {
    banner.hidden = true;
    clearInterval(beepTimer);
    beepTimer = null;
    return;
  }
  const newest = [...critical.values()].sort((a, b) => String(b.last_seen).localeCompare(String(a.last_seen)))[0];
  const title = lang === "th" ? newest.title_th : newest.title_en;
  // the banner's parts are made once and updated in place: a redraw while an operator reaches for "mute" must not
  // swap the button under the pointer
  if (!banner.querySelector("#mute")) {
    banner.replaceChildren(
      h("span", { class: "text" }, h("span", { class: "count" }), " — ", h("span", { class: "which", "data-raw": "" })),
      h("a", { href: "#/alarms", class: "open" }),
      h("button", { type: "button", id: "mute", onclick: toggleMute }));
  }
  banner.querySelector(".count").textContent = t("banner.critical", { n: critical.size });
  banner.querySelector(".which").textContent = `${title || newest.rule} · ${newest.device}`;
  banner.querySelector(".open").textContent = t("banner.open");
  banner.querySelector("#mute").textContent = muted() ? t("banner.unmute") : t("banner.mute");
  banner.hidden = false;
  if (!beepTimer) {
    beep();
    beepTimer = setInterval(beep, BEEP_EVERY_MS);
  }
}

function toggleMute() {
  localStorage.setItem("nakhon.mute", muted() ? "0" : "1");
  drawBanner();
}

async function loadCritical() {
  critical.clear();
  try {
    for (const alarm of await api("/api/alarms?state=active&severity=critical&limit=100", { quiet: true })) {
      critical.set(alarm.id, alarm);
    }
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
  }
  drawBanner();
}

// ---- pages and routing ----------------------------------------------------------------------------------

/** Register a page: registerPage("fleet", {title: {th, en}, roles: [...], nav: true, render(el, ctx)}).
 *  `roles` (empty: everyone) decides who sees it in the nav and may open it; `nav: false` keeps it out of the nav
 *  (a page reached by link, like a device). render may return a function called when the page is left. */
export function registerPage(id, page) {
  pages.set(id, { roles: [], nav: true, ...page, id });
  if (started) drawNav();
}

function allowed(page) {
  return page.roles.length === 0 || page.roles.some((r) => can(r));
}

/** Go to a hash route, e.g. navigate("#/device/kk-aq-0001"). */
export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function ordered() {
  return [...pages.values()].sort((a, b) => PAGES.indexOf(a.id) - PAGES.indexOf(b.id));
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const first = ordered().find((p) => p.nav && allowed(p));
  return { id: parts[0] || first?.id || "", params: parts.slice(1), query: new URLSearchParams(query) };
}

function drawNav(current = parseHash().id) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...ordered().filter((p) => p.nav && allowed(p)).map((p) =>
    h("a", { href: `#/${p.id}`, class: p.id === current ? "active" : "", dataset: { page: p.id },
      onclick: () => nav.classList.remove("open") }, pick(p.title))));
}

function drawChrome() {
  document.documentElement.lang = lang;
  document.getElementById("brand").textContent = t("shell.brand");
  document.getElementById("menu").textContent = t("shell.menu");
  document.getElementById("lang").textContent = t("shell.lang");
  document.getElementById("signout").textContent = t("shell.signout");
  const roles = me.roles.map((r) => t(`role.${r}`)).join(", ");
  document.getElementById("who").replaceChildren(t("shell.who", { name: me.name, roles }), " ",
    h("span", { id: "live", class: `live ${source && window.nakhon.streamOpen ? "on" : "off"}` },
      t(source && window.nakhon.streamOpen ? "shell.live" : "shell.reconnecting")));
  produced.add(me.name);
  produced.add(t("shell.who", { name: me.name, roles }));
  drawBanner();
}

async function route() {
  if (!me) return;
  if (leave) leave();
  leave = null;
  document.getElementById("notice").hidden = true;
  const { id, params, query } = parseHash();
  const main = document.getElementById("main");
  const el = h("div", { class: "page", dataset: { page: id } });
  main.replaceChildren(el);
  produced.clear();
  drawChrome();
  drawNav(id);
  translateLeaflet();
  const page = pages.get(id);
  if (!page) {
    el.append(h("p", {}, t("shell.no_page")));
    el.dataset.ready = "1";
    return;
  }
  if (!allowed(page)) {
    el.append(h("p", {}, t("shell.not_for_you")));
    el.dataset.ready = "1";
    return;
  }
  document.title = `${pick(page.title)} — Nakhon`;
  const cleanups = [];
  const ctx = {
    params, query, lang, session: session(), navigate,
    onStream(type, fn) {
      const off = onStream(type, fn);
      cleanups.push(off);
      return off;
    },
    every(ms, fn) {
      const timer = setInterval(fn, ms);
      cleanups.push(() => clearInterval(timer));
    },
    cleanup(fn) {
      cleanups.push(fn);
    },
  };
  leave = () => cleanups.splice(0).forEach((fn) => fn());
  try {
    const done = await page.render(el, ctx);
    if (typeof done === "function") cleanups.push(done);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      if (!(err instanceof ApiError)) console.error(err);
      el.append(h("p", { class: "muted" }, t("shell.page_failed", { detail: err.message })));
    }
  }
  window.nakhon.readyAt = performance.now();
  el.dataset.ready = "1";
}

// ---- sign-in ----------------------------------------------------------------------------------------------

function signedIn(body) {
  me = { name: body.user, roles: body.roles || [], csrf: body.csrf_token, csrfHeader: body.csrf_header || "X-CSRF-Token" };
  document.getElementById("top").hidden = false;
  document.getElementById("nav").hidden = false;
  drawChrome();
  openStream();
  loadCritical();
  route();
}

function showSignIn(message = "") {
  me = null;
  closeStream();
  if (leave) leave();
  leave = null;
  critical.clear();
  clearInterval(beepTimer);
  beepTimer = null;
  for (const id of ["top", "nav", "banner", "notice"]) document.getElementById(id).hidden = true;
  produced.clear();
  document.documentElement.lang = lang;
  document.title = `${t("signin.title")} — Nakhon`;
  const error = h("p", { class: "error", id: "signin-error", role: "alert" }, message);
  const name = h("input", { id: "signin-name", name: "username", autocomplete: "username", required: true, maxlength: "32" });
  const password = h("input", { id: "signin-password", name: "password", type: "password", autocomplete: "current-password",
    required: true, maxlength: "256" });
  const submit = h("button", { type: "submit", class: "primary", id: "signin-submit" }, t("signin.submit"));
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      submit.disabled = true;
      error.textContent = "";
      try {
        const response = await fetch("/api/session", {
          method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ name: name.value, password: password.value }),
        });
        const body = await response.json().catch(() => null);
        if (response.ok) signedIn(body);
        else error.textContent = response.status === 401 ? t("signin.wrong") : t("signin.failed", { detail: detailOf(body, response.status) });
      } finally {
        submit.disabled = false;
      }
    },
  },
  h("label", {}, t("signin.name"), name), h("label", {}, t("signin.password"), password), error, submit);
  document.getElementById("main").replaceChildren(h("section", { class: "signin card", id: "signin" },
    h("p", { class: "lang" }, h("button", { type: "button", id: "signin-lang", onclick: () => setLang(lang === "th" ? "en" : "th") },
      t("shell.lang"))),
    h("h1", {}, t("shell.brand")), h("h2", {}, t("signin.title")), form));
  name.focus();
}

// ---- start ----------------------------------------------------------------------------------------------

async function start() {
  document.documentElement.lang = lang;
  document.getElementById("lang").addEventListener("click", () => setLang(lang === "th" ? "en" : "th"));
  document.getElementById("menu").addEventListener("click", () => {
    const nav = document.getElementById("nav");
    nav.classList.toggle("open");
    document.getElementById("menu").setAttribute("aria-expanded", String(nav.classList.contains("open")));
  });
  document.getElementById("signout").addEventListener("click", async () => {
    try {
      await api("/api/session", { method: "DELETE" });
    } finally {
      showSignIn();
    }
  });
  window.addEventListener("hashchange", route);
  onStream("alarm", alarmChanged);
  const loading = Promise.allSettled(PAGES.map((id) => import(`./pages/${id}.js`)));
  const whoami = await fetch("/api/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
  await loading;
  started = true;
  if (whoami.ok) signedIn(await whoami.json());
  else showSignIn();
}

start();
