// plunder dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.
// The server's JSON is drawn with the DOM API (textContent only: no HTML from data) and the
// timelines as inline SVG. A server-sent event stream says when a watch brought news; the
// view the URL's fragment names is then read and drawn again, without reloading the page.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const SEGMENTS = ["inspect", "boot", "write", "phone-home", "wipe"];
const LABELS = {
  inspect: "boot + inspect", boot: "claim → agent writes", write: "write image",
  "phone-home": "reboot → phone home", wipe: "wipe",
};
const filters = { text: "", state: "", vendor: "" };
let drawing = 0;
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
  if (m < 60) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 5) return "just now";
  return `${duration(seconds)} ago`;
}

function hostLink(namespace, name) {
  return el("a", { href: `#/host/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}` }, name);
}

function clusterLink(namespace, name) {
  return el("a", { href: `#/cluster/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}` }, name);
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

// ------------------------------------------------------------------------------ timelines

// rows: [{label, href, offset, segments: [{name, label, start, end, seconds, open, slowest}]}]
function timelineChart(rows, attrs) {
  const width = 960, labelWidth = 230, rowHeight = 28, top = 8, axisHeight = 24;
  const span = Math.max(1, ...rows.map((row) => row.offset + Math.max(0, ...row.segments.map((s) => s.end))));
  const scale = (width - labelWidth - 20) / span;
  const height = top + rows.length * rowHeight + axisHeight;
  const chart = svg("svg", { class: "timeline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", ...attrs });
  const step = niceStep(span);
  for (let t = 0; t <= span + 1e-9; t += step) {
    const x = labelWidth + t * scale;
    chart.append(svg("line", { class: "axis", x1: x, x2: x, y1: top, y2: height - axisHeight + 4 }));
    chart.append(svg("text", { x, y: height - 6, "text-anchor": "middle" }, duration(t)));
  }
  rows.forEach((row, i) => {
    const y = top + i * rowHeight;
    const group = svg("g", { class: "timeline-row", "data-row": row.label });
    group.append(svg("text", { x: 4, y: y + 17 }, row.label));
    for (const segment of row.segments) {
      const x = labelWidth + (row.offset + segment.start) * scale;
      const w = Math.max(2, (segment.end - segment.start) * scale);
      const known = SEGMENTS.includes(segment.name) ? segment.name : "other";
      const classes = ["seg", `seg-${known}`];
      if (segment.open) classes.push("open");
      if (segment.slowest) classes.push("slowest");
      const rect = svg("rect", {
        class: classes.join(" "), x, y: y + 3, width: w, height: rowHeight - 8,
        "data-segment": segment.name, "data-seconds": segment.seconds,
      });
      const note = `${segment.label}: ${duration(segment.seconds)}${segment.open ? " (running)" : ""}` +
        (segment.slowest ? " — the slowest of this cluster" : "");
      rect.append(svg("title", {}, note));
      group.append(rect);
      if (w > 48) {
        group.append(svg("text", { x: x + 4, y: y + 17, class: "seg-text" }, duration(segment.seconds)));
      }
    }
    chart.append(group);
  });
  return chart;
}

function niceStep(span) {
  const raw = span / 8;
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  return steps.find((s) => s >= raw) || Math.ceil(raw / 3600) * 3600;
}

function legend() {
  return el("div", { class: "legend" },
    SEGMENTS.map((name) => el("span", {}, el("i", { class: `seg-${name}` }), LABELS[name])));
}

// ------------------------------------------------------------------------------ views

function matches(row) {
  if (filters.state && row.state !== filters.state) return false;
  if (filters.vendor && row.vendor !== filters.vendor) return false;
  if (!filters.text) return true;
  const haystack = [row.name, row.namespace, row.mac, row.consumer, row.hardware, row.ipAddress, row.state, row.vendor]
    .join(" ").toLowerCase();
  return haystack.includes(filters.text.toLowerCase());
}

function fleetRows(data) {
  const tbody = document.getElementById("host-rows"), shown = document.getElementById("shown-count");
  tbody.replaceChildren();
  const rows = data.hosts.filter(matches);
  for (const row of rows) {
    tbody.append(el("tr", { class: "host-row", "data-name": `${row.namespace}/${row.name}`, "data-state": row.state },
      el("td", {}, hostLink(row.namespace, row.name), el("div", { class: "muted" }, row.namespace)),
      el("td", { class: "mac" }, row.mac),
      el("td", {}, el("span", { class: `state state-${row.state}` }, row.state),
        row.writePercent !== null ? ` ${row.writePercent}%` : "",
        row.errorReason ? el("div", { class: "error" }, row.errorReason) : null,
        row.unhealthy ? el("div", { class: "error" }, "unhealthy") : null),
      el("td", { class: "vendor" }, row.vendor),
      el("td", { class: "hardware" }, row.hardware),
      el("td", { class: `power power-${row.power}` }, row.power),
      el("td", { class: "consumer" }, row.consumer),
      el("td", { class: "last-seen", title: row.lastSeen }, ago(row.lastSeenSeconds)),
      el("td", {}, row.ipAddress, row.firmware ? el("div", { class: "muted" }, row.firmware) : null)));
  }
  shown.textContent = `${rows.length} of ${data.hosts.length} hosts`;
}

// The fleet's skeleton (heading, filters, table) is made once; a live update redraws the rows,
// counts and choices only, so the filter being typed into keeps its focus and its text.
function fleetSkeleton(main) {
  const redraw = () => { if (main.fleetData) fleetRows(main.fleetData); };
  const text = el("input", {
    id: "filter-text", type: "search", placeholder: "name, MAC, consumer, hardware…", value: filters.text,
    oninput: (e) => { filters.text = e.target.value; redraw(); },
  });
  main.replaceChildren(
    el("h2", {}, "Fleet"),
    el("ul", { class: "error", id: "problems" }),
    el("div", { class: "chips", id: "state-counts" }),
    el("div", { class: "filters" }, text,
      el("label", {}, "state ", el("select", { id: "filter-state", onchange: (e) => { filters.state = e.target.value; redraw(); } })),
      el("label", {}, "vendor ", el("select", { id: "filter-vendor", onchange: (e) => { filters.vendor = e.target.value; redraw(); } })),
      el("span", { id: "shown-count", class: "muted" })),
    el("table", { id: "hosts" },
      el("thead", {}, el("tr", {}, ["Host", "MAC", "State", "Vendor", "Hardware", "Power", "Consumer", "Last seen", "Address"].map((h) => el("th", {}, h)))),
      el("tbody", { id: "host-rows" })),
    el("h3", {}, "Clusters"),
    el("div", { id: "cluster-list" }));
}

function choices(id, values, current) {
  const node = document.getElementById(id);
  const had = [...node.options].map((option) => option.value).join("\n");
  if (had === ["", ...values].join("\n")) return;  // unchanged: an open list stays open
  node.replaceChildren(el("option", { value: "" }, "all"),
    ...values.map((value) => el("option", { value, selected: value === current }, value)));
  node.value = values.includes(current) ? current : "";
}

async function drawFleet(main) {
  const data = await getJSON("/api/fleet");
  if (main.dataset.view !== "fleet" || !document.getElementById("host-rows")) fleetSkeleton(main);
  main.fleetData = data;
  document.getElementById("state-counts").replaceChildren(
    ...Object.entries(data.states).map(([state, count]) =>
      el("span", { class: "chip", "data-state": state }, el("span", { class: `state state-${state}` }, state), ` ${count}`)));
  const states = [...new Set([...Object.keys(data.states), filters.state].filter(Boolean))].sort();
  const vendors = [...new Set([...data.hosts.map((h) => h.vendor), filters.vendor].filter(Boolean))].sort();
  choices("filter-state", states, filters.state);
  choices("filter-vendor", vendors, filters.vendor);
  fleetRows(data);
  document.getElementById("problems").replaceChildren(
    ...Object.entries(data.problems).map(([kind, problem]) => el("li", { "data-kind": kind }, `cannot list ${kind}: ${problem}`)));
  document.getElementById("cluster-list").replaceChildren(clustersTable(data.clusters));
  return data.version;
}

function clustersTable(clusters) {
  if (!clusters.length) return el("p", { class: "muted", id: "clusters" }, "No Cluster API clusters.");
  return el("table", { id: "clusters" },
    el("thead", {}, el("tr", {}, ["Cluster", "Namespace", "Phase", "Machines"].map((h) => el("th", {}, h)))),
    el("tbody", {}, clusters.map((c) => el("tr", { class: "cluster-row", "data-name": `${c.namespace}/${c.name}` },
      el("td", {}, clusterLink(c.namespace, c.name)), el("td", {}, c.namespace),
      el("td", {}, c.phase + (c.paused ? " (paused)" : "")), el("td", {}, c.machines)))));
}

async function drawClusters(main) {
  const data = await getJSON("/api/fleet");
  main.replaceChildren(el("h2", {}, "Clusters"), clustersTable(data.clusters));
  return data.version;
}

function facts(id, pairs) {
  return el("dl", { class: "facts", id },
    pairs.filter(([, value]) => value !== "" && value !== null && value !== undefined)
      .map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

async function drawHost(main, namespace, name) {
  const data = await getJSON(`/api/hosts/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
  const h = data.host, hw = data.hardware;
  const parts = [
    el("h2", {}, `Host ${h.name}`, el("span", { class: "muted" }, ` in ${h.namespace}`)),
    facts("host-facts", [
      ["MAC", h.mac], ["State", el("span", { class: `state state-${h.state}`, id: "host-state" }, h.state)],
      ["Error", data.errorMessage || h.errorReason], ["Power", h.power], ["Consumer", h.consumer],
      ["Vendor", h.vendor], ["Firmware", h.firmware], ["Address", h.ipAddress], ["BMC", data.bmcAddress],
      ["Accepted", h.accepted ? "yes" : "no"], ["First seen", data.firstSeen],
      ["Last seen", `${ago(h.lastSeenSeconds)} (${h.lastSeen || "never"})`],
    ]),
    el("h3", {}, "Timeline of its last cycles"),
  ];
  if (data.cycles.length) {
    parts.push(legend());
    // Every cycle on one scale, the latest on top: a slower provisioning shows as a longer bar.
    const rows = data.cycles.map((cycle) => ({
      label: `${cycle.started.slice(0, 10)} ${cycle.started.slice(11, 19)} ${cycle.kind}`,
      offset: 0, segments: cycle.segments,
    }));
    parts.push(timelineChart(rows, { id: "host-timeline" }));
    parts.push(el("ul", { class: "muted", id: "cycles" }, data.cycles.map((cycle, i) => el("li", {},
      `${i === 0 ? "latest" : "earlier"}: ${cycle.kind} from ${cycle.started}, ` +
      `${duration(cycle.seconds)}${cycle.open ? " so far" : ""}`))));
  } else {
    parts.push(el("p", { class: "muted" }, "No phases recorded yet."));
  }
  parts.push(el("h3", {}, "Hardware"));
  if (hw) {
    parts.push(facts("hardware", [
      ["System", `${hw.systemVendor} ${hw.productName}`.trim()], ["Serial", hw.serialNumber],
      ["CPU", hw.cpuCount !== null ? `${hw.cpuCount} × ${hw.cpuModel || "?"}` : ""],
      ["Memory", hw.memoryMiB !== null ? `${(hw.memoryMiB / 1024).toFixed(1)} GiB` : ""],
      ["Disks", hw.disks.map((d) => `${d.name} ${(d.sizeBytes / 2 ** 30).toFixed(1)} GiB ${d.model}`).join("; ")],
      ["NICs", hw.nics.map((n) => `${n.name} ${n.mac} ${n.ip}`.trim()).join("; ")],
    ]));
  } else {
    parts.push(el("p", { class: "muted" }, "Not inspected yet."));
  }
  parts.push(el("h3", {}, "Conditions"),
    el("table", { id: "conditions" },
      el("thead", {}, el("tr", {}, ["Type", "Status", "Reason", "Message", "Since"].map((x) => el("th", {}, x)))),
      el("tbody", {}, data.conditions.map((c) => el("tr", {},
        [c.type, c.status, c.reason, c.message, c.lastTransitionTime].map((x) => el("td", {}, x)))))));
  parts.push(el("h3", {}, "Events"),
    el("table", { id: "events" },
      el("thead", {}, el("tr", {}, ["Time", "Type", "Reason", "Message", "Count"].map((x) => el("th", {}, x)))),
      el("tbody", {}, data.events.map((e) => el("tr", {},
        [e.time, e.type, e.reason, e.message, e.count].map((x) => el("td", {}, x)))))));
  parts.push(el("h3", {}, "The agent's log of its last boot"),
    data.agentLog ? el("pre", { class: "log", id: "agent-log" }, data.agentLog)
      : el("p", { class: "muted", id: "agent-log" }, "No log: its agent sent none yet."));
  main.replaceChildren(...parts);
  return data.version;
}

async function drawCluster(main, namespace, name) {
  const data = await getJSON(`/api/clusters/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
  const rows = data.machines.filter((m) => m.timeline).map((m) => ({
    label: `${m.machine} · ${m.host}`, offset: m.offset, segments: m.timeline.segments,
  }));
  const slow = data.machines.flatMap((m) => (m.timeline ? m.timeline.segments : [])
    .filter((s) => s.slowest).map((s) => `${s.label}: ${m.machine} on ${m.host} (${duration(s.seconds)})`));
  main.replaceChildren(...[
    el("h2", {}, `Cluster ${data.name}`,
      el("span", { class: "muted" }, [` in ${data.namespace}`, data.phase, data.paused ? "paused" : ""].filter(Boolean).join(" · "))),
    el("h3", {}, "Machines' timelines, on one clock"),
    legend(),
    rows.length ? timelineChart(rows, { id: "cluster-timeline" }) : el("p", { class: "muted" }, "No machine has a host with phases yet."),
    slow.length ? el("ul", { class: "slowest-note", id: "slowest" }, slow.map((s) => el("li", {}, `slowest in ${s}`))) : null,
    el("h3", {}, "Cluster → Machines → hosts"),
    el("table", { id: "machines" },
      el("thead", {}, el("tr", {}, ["Machine", "Role", "Phase", "PlunderMachine", "Host", "Host state", "Took"].map((x) => el("th", {}, x)))),
      el("tbody", {}, data.machines.map((m) => el("tr", { class: "machine-row", "data-machine": m.machine },
        el("td", {}, m.machine), el("td", {}, m.controlPlane ? "control plane" : "worker"), el("td", {}, m.phase),
        el("td", {}, m.plunderMachine), el("td", {}, m.host ? hostLink(data.namespace, m.host) : "—"),
        el("td", {}, m.hostState ? el("span", { class: `state state-${m.hostState}` }, m.hostState) : ""),
        el("td", {}, m.timeline ? duration(m.timeline.seconds) + (m.timeline.open ? " so far" : "") : "")))))].filter(Boolean));
  return data.version;
}

// ------------------------------------------------------------------------------ routing, live

async function draw() {
  const mine = ++drawing;
  const main = document.getElementById("main");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = ["host", "cluster", "clusters"].includes(parts[0]) ? parts[0] : "fleet";
  if (main.dataset.view !== view) main.dataset.version = "";
  let version;
  try {
    if (parts[0] === "host" && parts.length === 3) version = await drawHost(main, parts[1], parts[2]);
    else if (parts[0] === "cluster" && parts.length === 3) version = await drawCluster(main, parts[1], parts[2]);
    else if (parts[0] === "clusters") version = await drawClusters(main);
    else version = await drawFleet(main);
  } catch (error) {
    if (mine === drawing) {
      main.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
      main.dataset.view = "error";
    }
    return;
  }
  if (mine === drawing) {
    main.dataset.version = version;
    main.dataset.view = view;
  }
}

// A busy fleet changes often (each host's lastSeen, each write's progress): draw at most once
// a second, and soon after the last change.
let lastDraw = 0;
function soon() {
  if (timer) return;
  const wait = Math.max(150, 1000 - (Date.now() - lastDraw));
  timer = setTimeout(() => { timer = null; lastDraw = Date.now(); draw(); }, wait);
}

function live() {
  const badge = document.getElementById("live");
  const source = new EventSource("/api/changes");
  source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "live-on"; });
  source.addEventListener("error", () => { badge.textContent = "reconnecting…"; badge.className = "live-off"; });
  source.addEventListener("change", soon);
}

window.addEventListener("hashchange", () => { window.scrollTo(0, 0); draw(); });
document.addEventListener("DOMContentLoaded", () => { draw(); live(); });
