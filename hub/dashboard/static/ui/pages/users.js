// Users (admin): every account with its roles; add, change roles, disable, reset a password (a generated one is shown
// once), as `nakhon hub user ...` does on the server.
import { registerPage, addMessages, t, api, fmt, h, session, notice } from "../app.js";
import { raw, table, ask, label } from "../ops.js";

const ROLES = ["viewer", "operator", "finance", "gis", "admin"];
const ROLE_OPTIONS = ROLES.map((r) => [r, `role.${r}`]);

addMessages({
  th: {
    "users.title": "ผู้ใช้", "users.name": "ชื่อผู้ใช้", "users.roles": "บทบาท", "users.state": "สถานะ",
    "users.since": "สร้างเมื่อ", "users.actions": "การดำเนินการ", "users.active": "ใช้งาน", "users.disabled": "ระงับแล้ว",
    "users.add": "เพิ่มผู้ใช้", "users.password": "รหัสผ่าน (เว้นว่างเพื่อให้ระบบสร้าง)", "users.edit_roles": "แก้บทบาท",
    "users.disable": "ระงับ", "users.reset": "ตั้งรหัสผ่านใหม่", "users.disable_q": "ระงับผู้ใช้นี้? การเข้าระบบและโทเค็นจะหยุดทำงาน",
    "users.reset_q": "ตั้งรหัสผ่านใหม่และเปิดใช้งานอีกครั้ง", "users.generated": "รหัสผ่านของ {name} (แสดงครั้งเดียว เก็บรักษาให้ดี):",
    "users.added": "เพิ่มผู้ใช้ {name} แล้ว", "users.saved": "บันทึกแล้ว", "users.you": "(คุณ)",
  },
  en: {
    "users.title": "Users", "users.name": "User name", "users.roles": "Roles", "users.state": "State",
    "users.since": "Created", "users.actions": "Actions", "users.active": "active", "users.disabled": "disabled",
    "users.add": "Add user", "users.password": "Password (leave empty to generate one)", "users.edit_roles": "Change roles",
    "users.disable": "Disable", "users.reset": "Reset password", "users.disable_q": "Disable this user? Their sessions and tokens stop working.",
    "users.reset_q": "Set a new password and enable the user again", "users.generated": "Password of {name} (shown once, keep it safe):",
    "users.added": "User {name} added", "users.saved": "Saved", "users.you": "(you)",
  },
});

registerPage("users", {
  title: { th: "ผู้ใช้", en: "Users" },
  roles: ["admin"],
  async render(el) {
    const list = h("div", { id: "users-list" });
    const shown = h("div", { id: "users-password" });
    el.append(h("h1", {}, t("users.title")),
      h("p", {}, h("button", { type: "button", class: "primary", id: "users-add", onclick: add }, t("users.add"))),
      shown, list);

    function showPassword(answer) {
      if (!answer.password) return;
      shown.replaceChildren(h("div", { class: "card" }, h("p", {}, t("users.generated", { name: answer.name })),
        h("code", { "data-raw": "", id: "users-generated" }, answer.password), " ",
        h("button", { type: "button", onclick: () => shown.replaceChildren() }, t("shell.dismiss"))));
    }

    async function call(path, method, body) {
      try {
        return await api(path, { method, body });
      } catch (err) {
        if (err.status !== 403 && err.status !== 401) notice(t("shell.failed", { detail: err.message }), "error");
        return null;
      }
    }

    async function add() {
      const v = await ask("users.add", [
        { name: "name", label: "users.name", required: true, maxlength: 32 },
        { name: "roles", label: "users.roles", type: "checkboxes", options: ROLE_OPTIONS, value: ["viewer"], required: true },
        { name: "password", label: "users.password", type: "password", maxlength: 256 }]);
      if (!v) return;
      const answer = await call("/api/users", "POST", { name: v.name, roles: v.roles, ...(v.password ? { password: v.password } : {}) });
      if (!answer) return;
      notice(t("users.added", { name: answer.name }));
      showPassword(answer);
      await load();
    }

    async function editRoles(u) {
      const v = await ask("users.edit_roles", [
        { name: "roles", label: "users.roles", type: "checkboxes", options: ROLE_OPTIONS, value: u.roles, required: true }],
      { note: raw(u.name) });
      if (v && await call(`/api/users/${encodeURIComponent(u.name)}/roles`, "PUT", { roles: v.roles })) {
        notice(t("users.saved"));
        await load();
      }
    }

    async function disable(u) {
      const v = await ask("users.disable", [], { danger: true, confirm: "users.disable", note: t("users.disable_q") });
      if (v && await call(`/api/users/${encodeURIComponent(u.name)}/disable`, "POST")) await load();
    }

    async function reset(u) {
      const v = await ask("users.reset", [{ name: "password", label: "users.password", type: "password", maxlength: 256 }],
        { note: t("users.reset_q") });
      if (!v) return;
      const answer = await call(`/api/users/${encodeURIComponent(u.name)}/reset`, "POST", v.password ? { password: v.password } : {});
      if (!answer) return;
      showPassword(answer);
      await load();
    }

    async function load() {
      const me = session()?.name;
      const users = await api("/api/users");
      list.replaceChildren(table([
        { label: "users.name", cell: (u) => [raw(u.name), u.name === me ? [" ", t("users.you")] : ""] },
        { label: "users.roles", cell: (u) => u.roles.map((r, i) => [i ? ", " : "", label("role", r)]) },
        { label: "users.state", cell: (u) => (u.disabled ? t("users.disabled") : t("users.active")) },
        { label: "users.since", raw: true, cell: (u) => fmt.date(u.created_at, { dateStyle: "medium" }) },
        { label: "users.actions", cell: (u) => h("span", { class: "row" },
          h("button", { type: "button", dataset: { act: "roles", user: u.name }, onclick: () => editRoles(u) }, t("users.edit_roles")),
          h("button", { type: "button", dataset: { act: "reset", user: u.name }, onclick: () => reset(u) }, t("users.reset")),
          u.name !== me && !u.disabled ? h("button", { type: "button", class: "danger", dataset: { act: "disable", user: u.name },
            onclick: () => disable(u) }, t("users.disable")) : "") },
      ], users, { rowAttrs: (u) => ({ dataset: { user: u.name } }) }));
    }

    await load();
  },
});
