/* telemetry-ingest dashboard. Vanilla ES2020, no build step, no network beyond this origin.
 *
 * Every server value is untrusted (event payloads come from devices): it reaches the page only
 * through textContent, attributes set one by one, or uPlot's canvas; never through innerHTML.
 *
 * One refresh = at most the same five GET calls whatever the number of metrics or devices
 * (summary, charts, recent events, stale devices, dead letters), run in parallel; the next one
 * starts REFRESH_MS after the previous finished (never overlapping) and none runs while the tab
 * is hidden. Readers must not slow ingest, so the page asks only for what is seen: after the
 * first refresh (which loads every panel) a panel scrolled out of view is not polled, and is
 * refreshed as soon as it scrolls back in; and a refresh that was slow or refused for load
 * (503, 429, no answer) doubles the interval up to MAX_REFRESH_MS (at least the server's
 * Retry-After), a fast clean one sets it back. The source list for the filter is loaded when
 * the loop starts and when the filter is focused, not on every refresh: with thousands of
 * devices it is the largest answer.
 *
 * The view state lives in the URL's fragment (see readHash). Without a window there, the
 * charts start at the narrowest window and widen while the data reaches the window's start,
 * so a fresh stack's data fills its charts; a window the user picks (or the URL names) wins.
 * Every time shown is local, 24-hour, with the zone in the legend and the table headers.
 */
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const SLOW_MS = 1000;
  const MAX_REFRESH_MS = 30000;
  const PANELS = ["queue-title", "charts-title", "recent-title", "stale-title", "dead-title"];
  const REQUEST_TIMEOUT_MS = 10000;
  const SOURCES_MAX_AGE_MS = 10000;
  const KEY_STORAGE = "telemetry-ingest.apiKey";
  const WINDOWS = ["15m", "1h", "24h"];
  // A window is too narrow for its data when the oldest point is this close to its start.
  const FIT_EDGE = 0.02;
  const PAYLOAD_PREVIEW_CHARS = 300;
  const API = {
    access: "/api/ingest/access",
    summary: "/api/ingest/summary",
    charts: "/api/ingest/charts",
    recent: "/api/ingest/events/recent?count=20",
    stale: "/api/ingest/sources?stale=true",
    sources: "/api/ingest/sources?limit=5000",
    deadLetters: "/api/ingest/dead-letters?count=20",
    replay: "/api/ingest/dead-letters/replay",
  };

  const $ = (id) => document.getElementById(id);
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  const state = {
    key: readStoredKey(),
    access: null, // "write" | "read" | "none" | "unknown" (producer without /access)
    live: false, // the refresh loop is wanted (access known and sufficient)
    timer: null,
    inFlight: false,
    generation: 0, // bumped when the loop stops, so a refresh still in flight is discarded
    interval: REFRESH_MS, // grows while answers are slow or refused, see nextInterval
    loadAll: true, // the next refresh loads every panel, seen or not
    visible: new Map(), // panel title id -> in the viewport (unknown: counted as seen)
    again: false, // a refresh was asked for while one was running
    refreshes: 0,
    accessTimer: null,
    window: WINDOWS[0],
    windowChosen: false, // by the user or the URL; otherwise the window follows the data
    source: "",
    charts: new Map(), // metric -> {card, plot, note, range, signature, observer}
    rendered: new Map(), // panel -> JSON of what it shows, to skip identical re-renders
    sourcesLoadedAt: 0,
    sourceNames: "",
    zone: "",
    keyHelp: "", // the page's own explanation, shown again when no key was refused
    deadLettered: null, // from the summary: how many dead letters exist beyond those shown
  };

  class HttpError extends Error {
    constructor(status, detail, retryAfterS = 0) {
      super(detail);
      this.status = status;
      this.retryAfterS = retryAfterS;
    }
  }

  // ---------------------------------------------------------------- storage, HTTP

  function readStoredKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE);
    } catch {
      return null; // storage disabled: the key then lives in memory only
    }
  }

  function storeKey(key) {
    state.key = key;
    try {
      if (key === null) sessionStorage.removeItem(KEY_STORAGE);
      else sessionStorage.setItem(KEY_STORAGE, key);
    } catch {
      /* storage disabled: keep it in memory */
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method: options.method || "GET",
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        cache: "no-store",
        credentials: "same-origin",
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      const timedOut = err && err.name === "TimeoutError";
      throw new HttpError(0, timedOut ? "no answer (timed out)" : "producer unreachable");
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
      const retryAfter = Number(response.headers.get("Retry-After"));
      throw new HttpError(response.status, detail, Number.isFinite(retryAfter) ? retryAfter : 0);
    }
    return body;
  }

  function describe(err) {
    if (err instanceof HttpError) return err.status ? `${err.status} ${err.message}` : err.message;
    return String(err && err.message ? err.message : err);
  }

  // ---------------------------------------------------------------- formatting

  const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
  const countFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

  function formatValue(value) {
    return typeof value === "number" && Number.isFinite(value) ? numberFormat.format(value) : String(value ?? "");
  }

  function formatDuration(ms) {
    if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
    const one = (x) => x.toFixed(1).replace(/\.0$/, "");
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${one(ms / 1000)} s`;
    if (ms < 3600000) return `${one(ms / 60000)} min`;
    return `${one(ms / 3600000)} h`;
  }

  function pad(n, width = 2) {
    return String(n).padStart(width, "0");
  }

  // One clock everywhere (tables, axes, hover readouts, status): local time, 24-hour,
  // YYYY-MM-DD before it when not today; the zone is shown once per table and chart legend.
  function formatTime(ms) {
    const d = new Date(ms);
    if (Number.isNaN(d.getTime())) return "–";
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function formatDate(d) {
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }

  function isToday(d) {
    return formatDate(d) === formatDate(new Date()); // today's date is noise on a live dashboard
  }

  function formatDateTime(value, withMs = true) {
    const d = new Date(value);
    if (typeof value !== "number" && typeof value !== "string") return "–";
    if (Number.isNaN(d.getTime())) return String(value); // shown as sent: it may be the fault
    const time = withMs ? `${formatTime(d.getTime())}.${pad(d.getMilliseconds(), 3)}` : formatTime(d.getTime());
    return isToday(d) ? time : `${formatDate(d)} ${time}`;
  }

  /** The local zone as an offset from UTC ("UTC+05:30", "UTC" itself), today's. */
  function zoneLabel() {
    const offset = -new Date().getTimezoneOffset();
    if (offset === 0) return "UTC";
    const abs = Math.abs(offset);
    return `UTC${offset < 0 ? "-" : "+"}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
  }

  function showZone() {
    const zone = zoneLabel();
    if (zone === state.zone) return;
    state.zone = zone;
    let name = "";
    try {
      name = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch {
      /* no zone name: the offset says enough */
    }
    for (const node of document.querySelectorAll("[data-tz]")) {
      node.textContent = `(${zone})`;
      if (name) node.title = name;
    }
    state.rendered.delete("dead"); // its phone labels carry the zone
  }

  /** uPlot's x-axis labels: HH:MM (HH:MM:SS below a minute), the date under a new day's. */
  function axisTimes(u, splits, axisIdx, space, incr) {
    let previousDay = isToday(new Date(splits[0])) ? formatDate(new Date()) : "";
    return splits.map((ms) => {
      const d = new Date(ms);
      const time = incr % 60000 ? formatTime(ms) : formatTime(ms).slice(0, 5);
      const day = formatDate(d);
      const label = day === previousDay ? time : `${time}\n${day}`;
      previousDay = day;
      return label;
    });
  }

  function rollupBucketMs(name) {
    const match = /_(\d+)$/.exec(String(name || ""));
    return match ? Number(match[1]) : null;
  }

  function rollupLabel(name) {
    const match = /^([a-z.]+)_(\d+)$/.exec(String(name || ""));
    if (!match) return name ? `rollup ${name}` : "rollup";
    return `${match[1]} per ${formatDuration(Number(match[2]))}`;
  }

  // ---------------------------------------------------------------- DOM helpers

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) node.append(child); // strings become text nodes
    return node;
  }

  function setStatus(kind, text) {
    const status = $("status");
    // Screen readers hear changes of state (an error, its end, a pause), not every refresh.
    if (status.dataset.state !== kind || (kind === "error" && status.textContent !== text)) {
      $("announce").textContent = kind === "ok" ? "Live data restored" : text;
    }
    status.dataset.state = kind;
    status.textContent = text;
  }

  function setNumber(testId, value, text) {
    const node = byTestId(testId);
    node.dataset.value = value === null || value === undefined ? "" : String(value);
    node.textContent = text;
  }

  function changed(panel, data) {
    const json = JSON.stringify(data);
    if (state.rendered.get(panel) === json) return false;
    state.rendered.set(panel, json);
    return true;
  }

  function fillTable(testId, emptyId, rows) {
    const body = byTestId(testId).tBodies[0];
    body.replaceChildren(...rows);
    $(emptyId).hidden = rows.length > 0;
  }

  function cell(text, className) {
    return el("td", { text, class: className });
  }

  // ---------------------------------------------------------------- panels

  function renderSummary(data) {
    const queue = data.queue;
    const count = (v) => (typeof v === "number" ? countFormat.format(v) : "–");
    setNumber("queue-total", queue.total, count(queue.total));
    setNumber("queue-added", queue.added, count(queue.added));
    setNumber("queue-pending", queue.pending, count(queue.pending));
    setNumber("queue-lag", queue.lag, queue.lag === null || queue.lag === undefined ? "unknown" : count(queue.lag));
    setNumber("queue-dead-lettered", queue.dead_lettered, count(queue.dead_lettered));
    state.deadLettered = typeof queue.dead_lettered === "number" ? queue.dead_lettered : null;
    const oldest = queue.oldestPendingAgeMs;
    const oldestText = oldest === null || oldest === undefined ? "none" : formatDuration(oldest);
    setNumber("queue-oldest-pending", oldest, oldestText);
    const consumers = Array.isArray(queue.consumers) ? queue.consumers : [];
    fillTable(
      "consumers",
      "consumers-empty",
      consumers.map((c) =>
        el("tr", { dataset: { consumer: String(c.name) } }, [
          cell(c.name),
          el("td", { class: "num", text: count(c.pending), dataset: { value: String(c.pending) } }),
          el("td", { class: "num", text: formatDuration(c.idleMs), dataset: { value: String(c.idleMs) } }),
        ]),
      ),
    );
  }

  function renderRecent(entries) {
    if (!changed("recent", entries)) return;
    fillTable(
      "recent-events",
      "recent-empty",
      entries.map((entry) => {
        const v = entry.value && typeof entry.value === "object" ? entry.value : {};
        return el("tr", { dataset: { id: String(entry.id) } }, [
          cell(v.occurredAt === undefined ? "–" : formatDateTime(v.occurredAt), "when"),
          cell(v.source ?? "–"),
          cell(v.metric ?? "–"),
          cell(formatValue(v.value), "num"),
          cell(entry.id, "mono col-id"),
        ]);
      }),
    );
  }

  function renderStale(data) {
    if (typeof data.staleAfterMs === "number") {
      const more = data.next ? ` Showing the first ${(data.sources || []).length}.` : "";
      $("stale-hint").textContent = `Devices silent for more than ${formatDuration(data.staleAfterMs)}.${more}`;
    }
    const rows = [];
    for (const source of data.sources || []) {
      for (const metric of source.metrics || []) {
        if (metric.stale === false) continue;
        rows.push(
          el("tr", { class: "stale", dataset: { source: String(source.source), metric: String(metric.metric) } }, [
            cell(source.source),
            cell(metric.metric),
            cell(formatDateTime(metric.timestampMs), "when"),
            cell(formatValue(metric.value), "num"),
          ]),
        );
      }
    }
    fillTable("stale-sources", "stale-empty", rows);
  }

  function renderSourceOptions(data) {
    const names = [...new Set((data.sources || []).map((s) => String(s.source)))].sort();
    const key = names.join("\n");
    if (key === state.sourceNames) return;
    state.sourceNames = key;
    const select = $("source-select");
    if (state.source && !names.includes(state.source)) names.unshift(state.source);
    select.replaceChildren(
      el("option", { value: "", text: "Fleet (all devices)" }),
      ...names.map((name) => el("option", { value: name, text: name })),
    );
    select.value = state.source;
  }

  function renderDeadLetters(data) {
    const entries = Array.isArray(data.deadLetters) ? data.deadLetters : [];
    if (!changed("dead", { entries, access: state.access, total: state.deadLettered })) return;
    const write = state.access === "write";
    $("replay-all").hidden = !write || entries.length === 0;
    const total = state.deadLettered;
    $("dead-count").textContent =
      total !== null && total > entries.length ? `(newest ${entries.length} of ${countFormat.format(total)})` : "";
    fillTable(
      "dead-letters",
      "dead-empty",
      entries.map((entry) => {
        const payload = typeof entry.payload === "string" ? entry.payload : JSON.stringify(entry.payload);
        const preview =
          payload.length > PAYLOAD_PREVIEW_CHARS ? `${payload.slice(0, PAYLOAD_PREVIEW_CHARS)}…` : payload;
        const actions = el("td", { class: "write-only" });
        if (write) {
          const button = el("button", {
            type: "button",
            text: "Replay",
            "aria-label": `Replay dead letter ${entry.id}`,
            dataset: { testid: "replay", id: String(entry.id) },
          });
          button.addEventListener("click", () => replay({ ids: [String(entry.id)] }, button));
          actions.append(button);
        }
        return el("tr", { dataset: { id: String(entry.id), testid: "dead-letter" } }, [
          el("td", {
            class: "when",
            text: formatDateTime(entry.failedAt),
            dataset: { label: `Failed at (${state.zone})` },
          }),
          el("td", {
            class: "reason",
            text: entry.reason,
            dataset: { label: "Reason", testid: "dead-letter-reason" },
          }),
          el("td", { class: "payload", title: payload, dataset: { label: "Payload" } }, [
            el("code", { text: preview }),
          ]),
          el("td", { class: "mono col-id", text: entry.messageId, dataset: { label: "Message id" } }),
          el("td", { text: entry.consumer, dataset: { label: "Consumer" } }),
          actions,
        ]);
      }),
    );
  }

  // ---------------------------------------------------------------- charts

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function chartHeight(width) {
    return width < 500 ? 170 : 210;
  }

  /** uPlot wants one x array and y arrays aligned to it, null where a series has no point.
   * A rollup point is drawn at the middle of the span its bucket covers (the API stamps it
   * with the bucket's start): over the raw data it sums up, not half a bucket ahead of it.
   * The open bucket covers its start to now so far. */
  function alignedData(chart, bucketMs, to) {
    const raw = Array.isArray(chart.raw) ? chart.raw : [];
    const rollup = Array.isArray(chart.rollup) ? chart.rollup : [];
    const open = Boolean(chart.lastBucketOpen) && rollup.length > 0;
    const closed = open ? rollup.length - 1 : rollup.length;
    const middle = (start, i) => {
      if (!bucketMs) return start;
      const end = i >= closed && typeof to === "number" ? Math.min(start + bucketMs, to) : start + bucketMs;
      return start + Math.max(0, end - start) / 2;
    };
    const rolled = rollup.map((p, i) => ({ x: middle(p.timestampMs, i), value: p.value }));
    const xs = [...new Set([...raw.map((p) => p.timestampMs), ...rolled.map((p) => p.x)])].sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const empty = () => new Array(xs.length).fill(null);
    const yRaw = empty();
    const yClosed = empty();
    const yOpen = empty();
    for (const p of raw) yRaw[at.get(p.timestampMs)] = p.value;
    for (const p of rolled.slice(0, closed)) yClosed[at.get(p.x)] = p.value;
    if (open) {
      // The open bucket's series: its point plus the last closed one, so the dash joins them.
      const last = rolled[rolled.length - 1];
      yOpen[at.get(last.x)] = last.value;
      if (closed > 0) yOpen[at.get(rolled[closed - 1].x)] = rolled[closed - 1].value;
    }
    return [xs, yRaw, yClosed, yOpen];
  }

  function lastPointOnly(u, seriesIdx) {
    const ys = u.data[seriesIdx];
    for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== null && ys[i] !== undefined) return [i];
    return null;
  }

  function countPoints(ys) {
    return ys.reduce((n, y) => (y === null || y === undefined ? n : n + 1), 0);
  }

  function makePlot(entry, data, rawLabel, rollLabel) {
    const width = Math.max(entry.plotBox.clientWidth, 200);
    const colors = {
      raw: cssVar("--raw"),
      rollup: cssVar("--rollup"),
      panel: cssVar("--panel"),
      muted: cssVar("--muted"),
      grid: cssVar("--grid"),
    };
    const axis = {
      stroke: colors.muted,
      grid: { stroke: colors.grid, width: 1 },
      ticks: { stroke: colors.grid, width: 1 },
    };
    const options = {
      width,
      height: chartHeight(width),
      ms: 1, // timestamps in milliseconds, as the API sends them
      scales: {
        x: { time: true, range: (u, min, max) => (entry.range ? entry.range : [min, max]) },
      },
      axes: [{ ...axis, values: axisTimes }, { ...axis, size: 56 }],
      series: [
        { label: "Time", value: (u, ms) => (ms === null || ms === undefined ? "--" : formatDateTime(ms, false)) },
        { label: rawLabel, stroke: colors.raw, width: 1, spanGaps: true, points: { size: 4, fill: colors.raw } },
        {
          label: rollLabel,
          stroke: colors.rollup,
          width: 2.5,
          spanGaps: true,
          points: { size: 6, fill: colors.rollup },
        },
        {
          label: "open bucket",
          stroke: colors.rollup,
          width: 2,
          dash: [6, 4],
          spanGaps: true,
          // Only the open bucket's own point, hollow: drawn even where points are too dense.
          points: {
            show: false,
            filter: lastPointOnly,
            size: 10,
            width: 2,
            fill: colors.panel,
            stroke: colors.rollup,
          },
        },
      ],
      hooks: {
        // The hover readout (uPlot's legend) is shown only while the cursor is on a point.
        setCursor: [
          (u) => {
            entry.card.dataset.hover = String(u.cursor.idx !== null && u.cursor.idx !== undefined);
          },
        ],
        // Written after uPlot drew: what the canvas shows, for people reading the DOM and tests.
        draw: [
          (u) => {
            const card = entry.card;
            card.dataset.rawPoints = String(countPoints(u.data[1]));
            card.dataset.rollupPoints = String(countPoints(u.data[2]) + (countPoints(u.data[3]) > 0 ? 1 : 0));
            card.dataset.drawn = String(Number(card.dataset.drawn || 0) + 1);
          },
        ],
      },
    };
    return new window.uPlot(options, data, entry.plotBox);
  }

  function createChartCard(metric) {
    const title = el("h3", { text: metric });
    const plotBox = el("div", { class: "chart-plot", role: "img", "aria-label": `Chart of ${metric}` });
    const note = el("p", { class: "note", text: "No data in this window.", dataset: { testid: "chart-note" } });
    const card = el("article", { class: "chart", dataset: { testid: "chart", metric } }, [title, plotBox, note]);
    const entry = { card, plotBox, note, plot: null, range: null, signature: "", width: 0 };
    entry.observer = new ResizeObserver(() => {
      const width = Math.floor(plotBox.clientWidth);
      if (entry.plot && width > 0 && width !== entry.width) {
        entry.width = width;
        entry.plot.setSize({ width, height: chartHeight(width) });
      }
    });
    entry.observer.observe(plotBox);
    return entry;
  }

  function renderCharts(data) {
    if (typeof window.uPlot !== "function") throw new Error("the chart library did not load");
    const charts = Array.isArray(data.charts) ? data.charts : [];
    const wider = widerWindow(data);
    if (wider) {
      // Keep what is shown until the wider window's answer replaces it: no flash of a
      // narrower chart on load.
      state.window = wider;
      syncControls();
      refreshNow();
      return;
    }
    const rollLabel = rollupLabel(data.rollup);
    const bucketMs = rollupBucketMs(data.rollup);
    $("rollup-name").textContent = `${rollLabel} rollup`;
    const container = $("charts");
    container.dataset.window = String(data.window ?? "");
    container.dataset.source = data.source === null || data.source === undefined ? "" : String(data.source);
    const seen = new Set();
    charts.forEach((chart, position) => {
      const metric = String(chart.metric);
      seen.add(metric);
      let entry = state.charts.get(metric);
      if (!entry) {
        entry = createChartCard(metric);
        state.charts.set(metric, entry);
      }
      const here = container.children[position] || null;
      if (here !== entry.card) container.insertBefore(entry.card, here);
      entry.range = typeof data.from === "number" && typeof data.to === "number" ? [data.from, data.to] : null;
      const rawLabel =
        typeof chart.rawBucketMs === "number" ? `raw (avg per ${formatDuration(chart.rawBucketMs)})` : "raw";
      const aligned = alignedData(chart, bucketMs, data.to);
      const signature = `${rawLabel}|${rollLabel}`;
      if (!entry.plot || entry.signature !== signature) {
        if (entry.plot) entry.plot.destroy();
        entry.signature = signature;
        entry.plot = makePlot(entry, aligned, rawLabel, rollLabel);
        entry.width = Math.floor(entry.plotBox.clientWidth);
      } else {
        entry.plot.setData(aligned);
      }
      entry.card.dataset.window = container.dataset.window;
      entry.card.dataset.source = container.dataset.source;
      entry.card.dataset.lastBucketOpen = String(Boolean(chart.lastBucketOpen));
      const rollup = Array.isArray(chart.rollup) ? chart.rollup : [];
      const latest = rollup.length ? `, latest ${rollLabel} ${formatValue(rollup[rollup.length - 1].value)}` : "";
      entry.plotBox.setAttribute("aria-label", `Chart of ${metric}: ${countPoints(aligned[1])} raw points${latest}`);
      // What an open bucket means is said once, in the legend above the charts.
      entry.note.hidden = aligned[0].length > 0;
    });
    for (const [metric, entry] of state.charts) {
      if (seen.has(metric)) continue;
      entry.observer.disconnect();
      if (entry.plot) entry.plot.destroy();
      entry.card.remove();
      state.charts.delete(metric);
    }
    $("charts-empty").hidden = charts.length > 0;
  }

  /** The next wider window when the window follows the data and its oldest point reaches the
   * window's start (there may be more before it), else null. */
  function widerWindow(data) {
    const next = WINDOWS[WINDOWS.indexOf(state.window) + 1];
    if (state.windowChosen || data.window !== state.window || !next) return null;
    if (typeof data.from !== "number" || typeof data.to !== "number") return null;
    let oldest = Infinity;
    for (const chart of Array.isArray(data.charts) ? data.charts : []) {
      for (const p of Array.isArray(chart.raw) ? chart.raw : []) oldest = Math.min(oldest, p.timestampMs);
    }
    return oldest < data.from + (data.to - data.from) * FIT_EDGE ? next : null;
  }

  function chartsUrl() {
    const params = new URLSearchParams({ window: state.window });
    if (state.source) params.set("source", state.source);
    return `${API.charts}?${params}`;
  }

  // ---------------------------------------------------------------- the refresh loop

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = null;
    if (!state.live || document.hidden) return;
    state.timer = setTimeout(refresh, delay);
  }

  function refreshNow() {
    if (state.inFlight) state.again = true;
    else schedule(0);
  }

  async function refresh() {
    state.timer = null;
    if (state.inFlight) {
      state.again = true;
      return;
    }
    state.inFlight = true;
    try {
      await refreshOnce();
    } finally {
      state.inFlight = false;
    }
    const delay = state.again ? 0 : state.interval;
    state.again = false;
    schedule(delay);
  }

  function seen(titleId) {
    return state.visible.get(titleId) !== false;
  }

  // The next interval: doubled (at least the Retry-After asked for) after a refresh that was
  // slow or refused for load, back to REFRESH_MS after a fast, clean one.
  function nextInterval(results, elapsedMs) {
    let strained = elapsedMs > SLOW_MS;
    let retryAfterMs = 0;
    for (const result of results) {
      const err = result.status === "rejected" ? result.reason : null;
      if (err instanceof HttpError && (err.status === 0 || err.status === 429 || err.status >= 500)) {
        strained = true;
        retryAfterMs = Math.max(retryAfterMs, err.retryAfterS * 1000);
      }
    }
    if (!strained) return REFRESH_MS;
    return Math.min(MAX_REFRESH_MS, Math.max(state.interval * 2, retryAfterMs));
  }

  async function refreshOnce() {
    const all = state.loadAll;
    state.loadAll = false;
    const calls = [
      ["summary", API.summary, renderSummary, "queue-title"],
      ["charts", chartsUrl(), renderCharts, "charts-title"],
      ["recent events", API.recent, renderRecent, "recent-title"],
      ["stale devices", API.stale, renderStale, "stale-title"],
      ["dead letters", API.deadLetters, renderDeadLetters, "dead-title"],
    ].filter(([, , , titleId]) => all || seen(titleId));
    const generation = state.generation;
    const started = performance.now();
    const results = await Promise.allSettled(calls.map(([, url]) => api(url)));
    state.interval = nextInterval(results, performance.now() - started);
    document.body.dataset.refreshMs = String(state.interval);
    // The loop was stopped meanwhile (key forgotten or refused): these answers are stale.
    if (!state.live || generation !== state.generation) return;
    const problems = [];
    let refused = false;
    results.forEach((result, i) => {
      const [name, , render, titleId] = calls[i];
      const panel = $(titleId).closest("section");
      if (result.status === "fulfilled") {
        try {
          render(result.value);
          delete panel.dataset.outdated;
          return;
        } catch (err) {
          problems.push(`${name}: unexpected answer (${describe(err)})`);
        }
      } else if (result.reason instanceof HttpError && result.reason.status === 401) {
        refused = true;
      } else {
        problems.push(`${name}: ${describe(result.reason)}`);
      }
      panel.dataset.outdated = "true";
    });
    if (refused) {
      stopLoop();
      askForKey(state.key ? "The producer refused this key (401). Type a valid key." : null);
      return;
    }
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
    if (problems.length) setStatus("error", `${problems.join(" · ")} (retrying in ${formatDuration(state.interval)})`);
    else setStatus("ok", `Updated ${formatTime(Date.now())}`);
    showZone(); // the offset changes with daylight saving time
  }

  async function loadSources(force = false) {
    if (!state.live || (!force && Date.now() - state.sourcesLoadedAt < SOURCES_MAX_AGE_MS)) return;
    state.sourcesLoadedAt = Date.now();
    try {
      renderSourceOptions(await api(API.sources));
    } catch (err) {
      state.sourcesLoadedAt = 0;
      if (err instanceof HttpError && err.status === 401) return; // the next refresh asks for a key
      setStatus("error", `source list: ${describe(err)}`);
    }
  }

  function startLoop() {
    state.live = true;
    state.loadAll = true;
    loadSources(true);
    refreshNow();
  }

  function stopLoop() {
    state.live = false;
    state.generation += 1;
    clearTimeout(state.timer);
    state.timer = null;
  }

  // ---------------------------------------------------------------- access and the key

  function askForKey(message) {
    storeKey(null); // a refused key is not kept
    document.body.dataset.access = "none";
    $("access").textContent = "no key";
    const panel = $("key-panel");
    $("content").hidden = true;
    panel.hidden = false;
    panel.dataset.error = String(Boolean(message));
    $("key-message").textContent = message || state.keyHelp;
    $("forget-key").hidden = !state.key;
    setStatus("paused", "Waiting for an API key");
    $("key-input").focus();
  }

  function applyAccess(info) {
    state.access = info ? String(info.access) : "unknown";
    document.body.dataset.access = state.access;
    const badge = $("access");
    badge.hidden = false;
    if (info && info.authEnabled === false) badge.textContent = "auth off";
    else if (state.access === "write") badge.textContent = "write key";
    else if (state.access === "read") badge.textContent = "read key (no replay)";
    else badge.textContent = state.key ? "key in use" : "no key";
    $("forget-key").hidden = !state.key;
    state.rendered.delete("dead"); // the replay buttons depend on the access
    if (info && info.authEnabled && state.access === "none") {
      stopLoop();
      askForKey(state.key ? "This key is not accepted. Type another one." : null);
      return;
    }
    $("key-panel").hidden = true;
    $("content").hidden = false;
    startLoop();
  }

  async function checkAccess() {
    clearTimeout(state.accessTimer);
    let info = null;
    try {
      info = await api(API.access);
    } catch (err) {
      // 404: a producer without the access route; a 401 from the data calls will ask for a key.
      if (!(err instanceof HttpError && err.status === 404)) {
        setStatus("error", `access check: ${describe(err)} (retrying every ${REFRESH_MS / 1000} s)`);
        state.accessTimer = setTimeout(checkAccess, REFRESH_MS);
        return;
      }
    }
    applyAccess(info);
  }

  function forgetKey() {
    stopLoop();
    storeKey(null);
    state.rendered.clear();
    $("content").hidden = true;
    $("forget-key").hidden = true;
    setStatus("loading", "Key forgotten");
    checkAccess();
  }

  // ---------------------------------------------------------------- replay

  async function replay(body, button) {
    const result = $("replay-result");
    const buttons = document.querySelectorAll('[data-testid="replay"], #replay-all');
    buttons.forEach((b) => (b.disabled = true));
    result.dataset.state = "";
    result.textContent = "Replaying…";
    try {
      const answer = await api(API.replay, { method: "POST", body });
      const invalid = Array.isArray(answer.still_invalid) ? answer.still_invalid : [];
      const missing = Array.isArray(answer.missing) ? answer.missing : [];
      let text = `Replayed ${answer.replayed}.`;
      if (invalid.length) text += ` Still invalid: ${invalid.map((i) => `${i.id} (${i.reason})`).join("; ")}.`;
      if (missing.length) text += ` Not found: ${missing.join(", ")}.`;
      result.dataset.state = invalid.length || missing.length ? "error" : "ok";
      result.textContent = text;
    } catch (err) {
      result.dataset.state = "error";
      if (err instanceof HttpError && err.status === 403) {
        result.textContent = "This key may only read: replaying needs a write key.";
        checkAccess();
      } else if (err instanceof HttpError && err.status === 401) {
        stopLoop();
        askForKey("The producer refused this key (401). Type a valid key.");
      } else {
        result.textContent = `Replay failed: ${describe(err)}`;
      }
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      if (button && button.isConnected) button.focus();
      state.rendered.delete("dead");
      refreshNow();
    }
  }

  // ---------------------------------------------------------------- view state in the URL

  // The fragment, as URLSearchParams: window=15m|1h|24h (absent or unknown: the window follows
  // the data) and source=<device> (absent or empty: the fleet). Read on load and on a
  // hashchange; rewritten in place (no history entry) when the user changes either control,
  // naming the window only once the user picked one.
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const windowParam = params.get("window");
    state.windowChosen = WINDOWS.includes(windowParam);
    state.window = state.windowChosen ? windowParam : WINDOWS[0];
    state.source = params.get("source") || "";
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.windowChosen) params.set("window", state.window);
    if (state.source) params.set("source", state.source);
    const hash = String(params);
    history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
  }

  function syncControls() {
    for (const radio of document.querySelectorAll('input[name="window"]')) {
      radio.checked = radio.value === state.window;
    }
    const select = $("source-select");
    if (state.source && ![...select.options].some((o) => o.value === state.source)) {
      select.append(el("option", { value: state.source, text: state.source }));
    }
    select.value = state.source;
  }

  // Panels scrolled out of view are not polled; one coming back into view is refreshed at once.
  function watchPanels() {
    if (typeof IntersectionObserver !== "function") return; // every panel then counts as seen
    const observer = new IntersectionObserver((entries) => {
      let back = false;
      for (const entry of entries) {
        const titleId = entry.target.getAttribute("aria-labelledby");
        if (entry.isIntersecting && !seen(titleId)) back = true;
        state.visible.set(titleId, entry.isIntersecting);
      }
      if (back && state.live && !document.hidden) refreshNow();
    });
    for (const titleId of PANELS) observer.observe($(titleId).closest("section"));
  }

  // ---------------------------------------------------------------- start

  function init() {
    state.keyHelp = $("key-message").textContent;
    readHash();
    syncControls();
    showZone();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("key-input");
      const key = input.value.trim();
      if (!key) return;
      if (!/^[\x21-\x7e]{1,256}$/.test(key)) {
        // An HTTP header cannot carry anything else; fetch would throw before sending it.
        askForKey("A key is 1 to 256 printable ASCII characters, without spaces.");
        return;
      }
      input.value = "";
      storeKey(key);
      setStatus("loading", "Checking the key…");
      checkAccess();
    });
    $("forget-key").addEventListener("click", forgetKey);
    $("replay-all").addEventListener("click", (event) => replay({ all: true, max: 1000 }, event.currentTarget));
    $("chart-controls").addEventListener("submit", (event) => event.preventDefault());
    for (const radio of document.querySelectorAll('input[name="window"]')) {
      radio.addEventListener("change", () => {
        state.window = radio.value;
        state.windowChosen = true;
        writeHash();
        refreshNow();
      });
    }
    const select = $("source-select");
    select.addEventListener("change", () => {
      state.source = select.value;
      if (!state.windowChosen) {
        state.window = WINDOWS[0]; // fitted again to this device's (or the fleet's) data
        syncControls();
      }
      writeHash();
      refreshNow();
    });
    window.addEventListener("hashchange", () => {
      readHash();
      syncControls();
      refreshNow();
    });
    select.addEventListener("focus", () => loadSources());
    select.addEventListener("pointerdown", () => loadSources());
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        clearTimeout(state.timer);
        state.timer = null;
        if (state.live) setStatus("paused", "Paused while the tab is hidden");
      } else if (state.live) {
        refreshNow();
      }
    });
    if (typeof window.uPlot !== "function") setStatus("error", "The chart library did not load.");
    watchPanels();
    checkAccess();
  }

  init();
})();
