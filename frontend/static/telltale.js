// Telltale's pages: live refresh, relative times, and the buttons' API calls (with the
// session's CSRF token). No inline scripts, no third-party code.
(function () {
  "use strict";
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // The same wording as the server's (backend/src/present.rs), kept current between refreshes.
  function ago(iso) {
    const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (isNaN(seconds)) return iso;
    const abs = Math.abs(seconds);
    if (abs < 5) return "just now";
    const [n, unit] = abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.floor(abs / 60), "min"]
      : abs < 86400 ? [Math.floor(abs / 3600), "h"] : [Math.floor(abs / 86400), "d"];
    return seconds >= 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
  }

  function decorate(root) {
    root.querySelectorAll("time[data-ago]").forEach((t) => {
      // The tooltip is the server's local time with the site's zone named; keep it.
      t.textContent = ago(t.getAttribute("datetime"));
    });
  }

  function flash(text, bad) {
    const box = document.querySelector(".flash");
    if (!box) return;
    box.textContent = text;
    box.className = "flash " + (bad ? "bad" : "good");
    box.hidden = false;
  }

  // The answer also shows beside what was pressed (the form's `output`, else its table row's),
  // so a Send test far down the page is answered where the person is looking.
  function answer(element, text, bad) {
    const inForm = element.closest("form");
    const row = element.closest("tr");
    const out = (inForm && inForm.querySelector("output[id]")) || (row && row.querySelector("output[id]"));
    if (!out) return;
    out.textContent = text;
    out.className = "answer " + (bad ? "bad" : "good");
  }

  async function call(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "content-type": "application/json", "x-csrf-token": csrf(), accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = null;
    try { data = await response.json(); } catch (_) { /* 204 */ }
    return { ok: response.ok, status: response.status, data };
  }

  function describe(result) {
    // An answer may say what happened in words (where a reset link went).
    if (result.ok) return (result.data && typeof result.data.message === "string" && result.data.message) || "Done.";
    const error = result.data && result.data.error;
    return error ? `${error.message} (${result.status})` : `Failed (${result.status})`;
  }

  async function refresh() {
    const main = document.querySelector("main[data-live]");
    if (!main) return;
    const active = document.activeElement;
    if (active && main.contains(active) && active.closest("form")) return; // someone is typing
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (response.redirected || !response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      if (!fresh) return;
      const note = main.querySelector(".flash");
      const answers = [...main.querySelectorAll("output[id]")].filter((o) => o.textContent)
        .map((o) => [o.id, o.textContent, o.className]);
      // Panels a person opened or closed stay so (the fresh page has their initial state).
      const opened = new Map([...main.querySelectorAll("details[id]")].map((d) => [d.id, d.open]));
      main.innerHTML = fresh.innerHTML;
      for (const [id, open] of opened) {
        const panel = document.getElementById(id);
        if (panel && panel.tagName === "DETAILS") panel.open = open;
      }
      if (note && !note.hidden) main.querySelector(".flash").replaceWith(note);
      for (const [id, text, className] of answers) {
        const out = document.getElementById(id);
        if (out) Object.assign(out, { textContent: text, className });
      }
      decorate(main);
    } catch (_) { /* offline: keep what is shown */ }
  }

  document.addEventListener("click", async (event) => {
    const copy = event.target.closest("button[data-copy]");
    if (copy) {
      const source = document.querySelector(copy.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        copy.textContent = "Copied";
      } catch (_) {
        // No clipboard (plain http on another host): select the text for Ctrl+C instead.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
      }
      return;
    }
    const button = event.target.closest("button[data-post], button[data-delete], button[data-patch]");
    if (!button || button.disabled) return;
    event.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
    const [method, url] = button.dataset.post ? ["POST", button.dataset.post]
      : button.dataset.patch ? ["PATCH", button.dataset.patch] : ["DELETE", button.dataset.delete];
    const result = await call(method, url, body);
    if (result.ok && after(button, result)) return;
    flash(`${button.textContent.trim()}: ${describe(result)}`, !result.ok);
    answer(button, describe(result), !result.ok);
    await refresh();
  });

  // After a success: go where `data-navigate` (a field of the answer) or `data-then` (a path,
  // `{id}` taken from the answer) says. Returns whether the page is being left.
  function after(element, result) {
    const field = element.dataset.navigate;
    if (field && result.data && result.data[field]) {
      location.href = result.data[field];
      return true;
    }
    const then = element.dataset.then;
    if (then) {
      location.href = then.replace("{id}", result.data && result.data.id);
      return true;
    }
    return false;
  }

  // `settings.scope` → {settings: {scope: …}}: a form fills a nested JSON body.
  function put(body, key, value) {
    const parts = key.split(".");
    let target = body;
    for (const part of parts.slice(0, -1)) target = target[part] = target[part] || {};
    target[parts[parts.length - 1]] = value;
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (form.matches("form[data-form-post]")) {
      event.preventDefault();
      await call("POST", form.getAttribute("action"));
      location.href = "/login";
      return;
    }
    if (!form.matches("form[data-api]")) return;
    event.preventDefault();
    const body = {};
    new FormData(form).forEach((value, key) => {
      const input = form.elements[key];
      if (input && input.dataset && input.dataset.utc !== undefined && value) {
        body[key] = new Date(value).toISOString();
      } else if (form.dataset.list === key) {
        body[key] = value ? [value] : [];
      } else if (value !== "") {
        put(body, key, value);
      }
    });
    const result = await call(form.dataset.method || "POST", form.dataset.api, body);
    if (result.ok && after(form, result)) return;
    const once = form.dataset.secret !== undefined ? " (copy it now; it is not shown again)" : "";
    const shown = form.dataset.show && result.ok && result.data ? ` ${form.dataset.show}: ${result.data[form.dataset.show]}${once}` : "";
    flash(`${describe(result)}${shown}`, !result.ok);
    answer(form, `${describe(result)}${shown}`, !result.ok);
    if (result.ok) form.reset();
    if (document.activeElement) document.activeElement.blur();
    await refresh();
  });

  decorate(document);
  const main = document.querySelector("main[data-live]");
  if (main) setInterval(refresh, (Number(main.dataset.live) || 10) * 1000);
})();
