// Pieces the operations pages (alarms, dead letters, finance, reports, audit, users) share: data cells marked as
// data (not labels), tables, a dialog that asks for a reason or a value, Leaflet on demand, Bangkok's date.
import { h, t, addMessages, currentLang, loadScript, loadStyle } from "./app.js";

loadStyle("/ui/ops.css");

addMessages({
  th: { "ops.none": "ไม่มีรายการ", "ops.ok": "ตกลง", "ops.cancel": "ยกเลิก", "ops.required": "กรุณากรอก {field}" },
  en: { "ops.none": "Nothing to show", "ops.ok": "OK", "ops.cancel": "Cancel", "ops.required": "Please fill in {field}" },
});

/** A span holding data (a device id, a date, an amount): shown as is, never translated. */
export function raw(value, attrs = {}) {
  return h("span", { "data-raw": "", ...attrs }, value === null || value === undefined || value === "" ? "—" : String(value));
}

/** The message `prefix.value` when there is one (a known state, severity, role...), else the value as data. */
export function label(prefix, value) {
  const key = `${prefix}.${value}`;
  return key in (window.nakhon?.messages?.[currentLang()] || {}) ? t(key) : raw(value);
}

/** An <option> for a value, its text the message `prefix.value` when there is one, else the value as data. */
export function option(value, prefix = null, selected = false) {
  const key = `${prefix}.${value}`;
  const known = prefix && key in (window.nakhon?.messages?.[currentLang()] || {});
  return h("option", { value, selected, "data-raw": known ? null : "" }, known ? t(key) : String(value));
}

/** A table: columns [{label: message key, cell(row) -> Node|string, raw: true when the cell is data}], rows. */
export function table(columns, rows, { rowAttrs = () => ({}), empty = "ops.none" } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, t(empty));
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.label ? t(c.label) : "")))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs(row), columns.map((c) => {
      const value = c.cell(row);
      return h("td", c.raw ? { "data-raw": "" } : {}, value instanceof Node || Array.isArray(value) ? value
        : value === null || value === undefined || value === "" ? "—" : String(value));
    }))))));
}

/** Ask for values in a modal dialog: fields [{name, label, type, required, min, max, minlength, options:
 *  [[value, label key]], value}]; resolves {name: value} or null when cancelled. */
export function ask(title, fields, { confirm = "ops.ok", danger = false, note = null } = {}) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "ask" });
    const inputs = {};
    const error = h("p", { class: "error", role: "alert" });
    const close = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    const form = h("form", {
      method: "dialog",
      onsubmit: (event) => {
        event.preventDefault();
        const values = {};
        for (const f of fields) {
          const input = inputs[f.name];
          values[f.name] = f.type === "checkboxes" ? [...input.querySelectorAll("input:checked")].map((i) => i.value)
            : input.value.trim();
          const blank = f.type === "checkboxes" ? !values[f.name].length : !values[f.name];
          if (f.required && blank) {
            error.textContent = t("ops.required", { field: t(f.label) });
            return;
          }
          if (!input.checkValidity?.() && f.type !== "checkboxes") {
            error.textContent = input.validationMessage;
            return;
          }
        }
        close(values);
      },
    });
    for (const f of fields) {
      let input;
      if (f.options && f.type === "checkboxes") {
        input = h("fieldset", { name: f.name }, f.options.map(([value, label]) => h("label", {},
          h("input", { type: "checkbox", value, checked: (f.value || []).includes(value) }), " ", t(label))));
      } else if (f.options) {
        input = h("select", { name: f.name }, f.options.map(([value, label]) =>
          h("option", { value, selected: value === f.value }, t(label))));
      } else if (f.type === "textarea") {
        input = h("textarea", { name: f.name, rows: "3", minlength: f.minlength, maxlength: f.maxlength || 1000 });
      } else {
        input = h("input", { name: f.name, type: f.type || "text", min: f.min, max: f.max, step: f.step,
          minlength: f.minlength, maxlength: f.maxlength || 200, value: f.value ?? "" });
      }
      inputs[f.name] = input;
      form.append(h("label", { class: "field" }, h("span", {}, t(f.label)), input));
    }
    form.append(error, h("div", { class: "row" },
      h("button", { type: "submit", class: danger ? "danger" : "primary", "data-confirm": "yes" }, t(confirm)),
      h("button", { type: "button", onclick: () => close(null) }, t("ops.cancel"))));
    dialog.append(h("h2", {}, t(title)), note ? h("p", {}, note) : "", form);
    dialog.addEventListener("cancel", () => close(null));
    document.body.append(dialog);
    dialog.showModal();
    form.querySelector("input, select, textarea")?.focus();
  });
}

/** Today's date in Bangkok, YYYY-MM-DD (the finance day). */
export function bangkokToday() {
  return new Intl.DateTimeFormat("en-CA", { timeZone: "Asia/Bangkok" }).format(new Date());
}

/** Leaflet (vendored), loaded once when a page first needs a map (the map page loads the same files). */
export async function loadLeaflet() {
  await Promise.all([loadStyle("/vendor/leaflet/leaflet.css"), loadScript("/vendor/leaflet/leaflet.js")]);
  return window.L;
}

/** Call fn at most once per `ms` after a burst of calls (many stream messages, one reload). */
export function debounce(fn, ms = 150) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
