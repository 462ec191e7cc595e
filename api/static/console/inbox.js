// The alert inbox: live updates over the alert SSE stream, actions through the JSON API, evidence charts.
// Every action is a request to the API's own guarded routes with the session's CSRF token.
(function () {
  "use strict";
  const root = document.getElementById("inbox");
  if (!root) return;
  const list = document.getElementById("inbox-list");
  const filters = JSON.parse(root.dataset.filters || "{}");
  const T = JSON.parse(document.getElementById("inbox-i18n").textContent);

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    if (meta && meta.content) return meta.content;
    const m = document.cookie.match(/(?:^|;\s*)campusmon_csrf=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  function status(text, bad) {
    const el = document.getElementById("inbox-status");
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("bad", !!bad);
  }

  async function api(method, path, body) {
    const r = await fetch(path, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!r.ok) {
      let msg = r.status + "";
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.status === 204 ? null : r.json();
  }

  // -- live: the SSE stream says which alert changed; the server renders its group again -------------
  function matches(a) {
    if (!a) return false;
    if (filters.severity && a.severity !== filters.severity) return false;
    if (filters.building && a.building !== filters.building) return false;
    if (filters.rule && a.rule !== filters.rule) return false;
    return true;
  }

  async function refresh(alertId) {
    const qs = new URLSearchParams(filters).toString();
    const r = await fetch(`/console/alerts/${alertId}/card?${qs}`, { credentials: "same-origin" });
    if (!r.ok) return;
    const html = (await r.text()).trim();
    const tpl = document.createElement("template");
    tpl.innerHTML = html;
    const fresh = tpl.content.querySelector(".alert-group");
    const key = fresh ? fresh.dataset.group : null;
    const old = key ? list.querySelector(`.alert-group[data-group="${CSS.escape(key)}"]`) : null;
    // The group the alert was in before (it may have left the filter, e.g. acknowledged).
    const before = list.querySelector(`.alert-group[data-alerts~="${alertId}"]`);
    if (fresh) {
      const wasOpen = (old || before) && (old || before).querySelector("details.more[open]");
      if (old) old.replaceWith(fresh); else if (before) before.replaceWith(fresh); else list.prepend(fresh);
      if (wasOpen) fresh.querySelector("details.more").open = true;
      wire(fresh);
      fresh.classList.add("flash");
    } else if (before) {
      before.remove();
    }
    const empty = document.getElementById("inbox-empty");
    if (empty) empty.hidden = list.querySelector(".alert-group") !== null;
    const n = document.getElementById("inbox-count");
    if (n) n.textContent = list.querySelectorAll(".alert-group").length;
  }

  function listen() {
    if (root.dataset.live !== "1" || !window.EventSource) return;
    const es = new EventSource("/api/v1/alerts/stream");
    const seen = new Set();
    const onEvent = (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      if (seen.has(data.id)) return;
      seen.add(data.id);
      if (!matches(data.alert)) return;
      refresh(data.alert_id).catch(() => {});
    };
    for (const t of ["opened", "acknowledged", "cleared", "assigned", "note", "severity"]) {
      es.addEventListener(t, onEvent);
    }
    es.onopen = () => { status(T.live); root.dataset.connected = "1"; };
    es.onerror = () => { status(T.reconnecting, true); root.dataset.connected = "0"; };
  }

  // -- actions ---------------------------------------------------------------------------------------
  async function act(btn) {
    const card = btn.closest(".alert-card");
    const id = card.dataset.alert;
    const what = btn.dataset.action;
    const form = btn.closest("form");
    btn.disabled = true;
    try {
      if (what === "ack") await api("POST", `/api/v1/alerts/${id}/ack`);
      else if (what === "clear") await api("POST", `/api/v1/alerts/${id}/clear`);
      else if (what === "assign") {
        const who = form.querySelector("input[name=assignee]").value.trim();
        await api("POST", `/api/v1/alerts/${id}/assign`, { assignee: who || null });
      } else if (what === "note") {
        const text = form.querySelector("textarea[name=text]").value.trim();
        if (!text) { btn.disabled = false; return; }
        await api("POST", `/api/v1/alerts/${id}/notes`, { text: text });
      } else if (what === "silence") {
        const hours = parseFloat(form.querySelector("select[name=hours]").value);
        const now = Math.floor(Date.now() / 1000);
        await api("POST", "/api/v1/alerts/silences", {
          rules: [card.dataset.rule],
          subjects: [card.dataset.subject],
          buildings: card.dataset.building ? [card.dataset.building] : [],
          start: String(now),
          end: String(now + Math.round(hours * 3600)),
          reason: form.querySelector("input[name=reason]").value.trim(),
        });
        status(T.silenced);
      }
      await refresh(id);
    } catch (e) {
      status(T.failed + " " + e.message, true);
      btn.disabled = false;
    }
  }

  // -- evidence charts (drawn when a card is opened) -------------------------------------------------
  async function chart(el) {
    if (el.dataset.drawn) return;
    el.dataset.drawn = "1";
    const r = await fetch(el.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) { el.textContent = T.no_evidence; return; }
    const option = await r.json();
    if (!option.series.length || !option.series.some((s) => s.data.length)) {
      el.classList.add("empty");
      el.textContent = T.no_evidence;
      el.setAttribute("data-series", "0");
      return;
    }
    window.CampusConsole.draw(el, option);
  }

  function wire(scope) {
    scope.querySelectorAll("button[data-action]").forEach((b) => {
      b.addEventListener("click", (e) => { e.preventDefault(); act(b); });
    });
    scope.querySelectorAll("details.more").forEach((d) => {
      d.addEventListener("toggle", () => { if (d.open) d.querySelectorAll(".evidence-chart").forEach(chart); });
      if (d.open) d.querySelectorAll(".evidence-chart").forEach(chart);
    });
  }

  wire(document);
  listen();
})();
