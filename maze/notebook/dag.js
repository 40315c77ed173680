// Front end of maze's DagWidget. The SVG is laid out once by Graphviz in the
// kernel; here its nodes are indexed once, and each update does constant work
// per changed task: recolour its node, or move one count of its group (bar,
// counts text, colour). No re-layout, no query over the whole DOM per update.
const ORDER = ["pending", "running", "retrying", "finished", "cached", "failed", "skipped", "cancelled", "interrupted"];
// Which state colours a group: the same rule as render.group_state in the kernel.
const PRECEDENCE = ["failed", "running", "retrying", "interrupted", "cancelled", "pending", "skipped", "cached", "finished"];
const DONE = new Set(["finished", "cached", "skipped"]);
const SVG_NS = "http://www.w3.org/2000/svg";
const MIN_ZOOM = 0.6;   // never shrink labels below this: scroll instead

function groupState(counts) {
  const present = PRECEDENCE.filter((s) => counts[s]);
  if (!present.length) return "pending";
  if (present[0] === "pending" && present.some((s) => DONE.has(s))) return "running";
  return present[0];
}

function countsText(counts, looks) {
  return ORDER.filter((s) => counts[s]).map((s) => `${counts[s].toLocaleString("en")} ${looks[s].icon}`).join("  ");
}

// The box of a polygon from its points: no layout needed (getBBox() is all zeros while the
// widget is not on screen, e.g. in a collapsed cell or a background tab).
function boxOf(polygon) {
  const pts = polygon.getAttribute("points").trim().split(/\s+/).map((p) => p.split(",").map(Number));
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x = Math.min(...xs), y = Math.min(...ys);
  return { x, y, width: Math.max(...xs) - x, height: Math.max(...ys) - y };
}

function render({ model, el }) {
  el.classList.add("maze-dag");
  el.innerHTML = `
    <div class="maze-head"><span class="maze-title"></span><span class="maze-status"></span>
      <div class="maze-bar"></div><span class="maze-count"></span>
      <span class="maze-zoom"><button data-zoom="out" title="zoom out">−</button><button data-zoom="fit" title="fit the width">fit</button><button data-zoom="in" title="zoom in">+</button></span></div>
    <div class="maze-graph"></div><div class="maze-legend"></div>
    <div class="maze-failures"></div><div class="maze-detail"></div>
    <details class="maze-log"><summary>output</summary><pre></pre></details>`;
  const graph = el.querySelector(".maze-graph");
  const looks = model.get("looks");
  const current = {};          // task -> state
  const totals = {};           // state -> number of tasks
  let elements = {};           // element id -> <g> of a node
  const groups = {};           // group element id -> {counts, bar rects, text, dirty}
  let zoom = 1, natural = null;

  // -- layout: indexed once ----------------------------------------------------------
  function draw() {
    graph.innerHTML = "";
    if (model.get("svg")) {
      graph.innerHTML = model.get("svg");
      index();
      fitZoom();
    } else if (model.get("hint")) {
      const pre = document.createElement("pre");
      pre.textContent = model.get("dot") + "\n\n" + model.get("hint");
      graph.appendChild(pre);
    } else {
      graph.textContent = "laying out the graph…";
    }
  }

  function index() {
    elements = {};
    for (const g of graph.querySelectorAll("g.node")) elements[g.id] = g;
    const info = model.get("groups");
    for (const [id, meta] of Object.entries(info)) {
      const g = elements[id];
      if (!g) continue;
      const cells = g.querySelectorAll("polygon");
      const track = cells[cells.length - 1];   // the label's last cell is the bar's track
      const texts = g.querySelectorAll("text");
      const box = track ? boxOf(track) : null;
      if (box) {
        for (const t of texts) {   // centred, so the counts stay inside the node as they grow
          t.setAttribute("text-anchor", "middle");
          t.setAttribute("x", box.x + box.width / 2);
        }
      }
      const bar = document.createElementNS(SVG_NS, "g");
      bar.setAttribute("class", "maze-gbar");
      const rects = {};
      for (const state of ORDER) {
        const r = document.createElementNS(SVG_NS, "rect");
        if (box) { r.setAttribute("y", box.y); r.setAttribute("height", box.height); }
        r.setAttribute("width", 0);
        r.setAttribute("fill", looks[state].fill === "#FFFFFF" ? "#DDDDDD" : looks[state].fill);
        r.setAttribute("stroke", "#FFFFFF");   // so a bar of the box's own colour still shows
        r.setAttribute("stroke-width", "0.8");
        bar.appendChild(r);
        rects[state] = r;
      }
      g.appendChild(bar);
      g.style.cursor = "pointer";
      g.addEventListener("click", () => model.send({ type: "group", group: id }));
      groups[id] = { size: meta.size, counts: {}, rects, box, text: texts[1], dirty: true };
    }
    // Every known state again, now that there are elements to paint.
    for (const task of Object.keys(current)) {
      const id = model.get("nodes")[task];
      if (groups[id]) groups[id].counts[current[task]] = (groups[id].counts[current[task]] || 0) + 1;
      else paintNode(task, current[task]);
    }
    for (const id of Object.keys(groups)) paintGroup(id);
  }

  // -- zoom and pan: the picture keeps a readable size; the cell scrolls ---------------
  function fitZoom() {
    const svg = graph.querySelector("svg");
    if (!svg) return;
    const w = parseFloat(svg.getAttribute("width")), h = parseFloat(svg.getAttribute("height"));
    natural = { w: (w * 4) / 3, h: (h * 4) / 3 };   // Graphviz sizes are in points
    const fit = (graph.clientWidth || 900) / natural.w;
    setZoom(Math.max(MIN_ZOOM, Math.min(1, fit)));
  }

  function setZoom(z) {
    const svg = graph.querySelector("svg");
    if (!svg || !natural) return;
    zoom = Math.max(0.1, Math.min(4, z));
    svg.style.width = `${natural.w * zoom}px`;
    svg.style.height = `${natural.h * zoom}px`;
    svg.style.maxWidth = "none";
  }

  el.querySelector(".maze-zoom").addEventListener("click", (e) => {
    const what = e.target.getAttribute("data-zoom");
    if (what === "in") setZoom(zoom * 1.25);
    else if (what === "out") setZoom(zoom / 1.25);
    else if (what === "fit" && natural) setZoom(Math.min(1, (graph.clientWidth || 900) / natural.w));
  });
  graph.addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    setZoom(zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1));
  }, { passive: false });
  let drag = null;
  graph.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, l: graph.scrollLeft, t: graph.scrollTop }; });
  window.addEventListener("mouseup", () => { drag = null; });
  graph.addEventListener("mousemove", (e) => {
    if (!drag) return;
    graph.scrollLeft = drag.l - (e.clientX - drag.x);
    graph.scrollTop = drag.t - (e.clientY - drag.y);
  });

  // -- painting ----------------------------------------------------------------------
  function paintShapes(g, look, shapes) {
    for (const shape of shapes) {
      if (shape.getAttribute("fill") !== "none") shape.setAttribute("fill", look.fill);  // an outer ring stays open
      shape.setAttribute("stroke", look.border);
      shape.setAttribute("stroke-width", look.width);
      if (look.dash) shape.setAttribute("stroke-dasharray", look.dash);
      else shape.removeAttribute("stroke-dasharray");
    }
  }

  function paintNode(task, state, tip) {
    const g = elements[model.get("nodes")[task]];
    if (!g) return;
    const look = looks[state];
    g.setAttribute("data-state", state);
    paintShapes(g, look, g.querySelectorAll("path, polygon, ellipse"));
    const text = g.querySelector("text");
    if (text) {
      text.setAttribute("fill", look.font);
      text.textContent = `${look.icon} ${task}`;
    }
    if (tip !== undefined) {
      let title = g.querySelector("title");
      if (!title) {
        title = document.createElementNS(SVG_NS, "title");
        g.prepend(title);
      }
      title.textContent = tip;
    }
  }

  function paintGroup(id) {
    const grp = groups[id], g = elements[id];
    if (!grp || !g || !grp.dirty) return;
    grp.dirty = false;
    const state = groupState(grp.counts), look = looks[state];
    g.setAttribute("data-state", state);
    g.setAttribute("data-counts", JSON.stringify(grp.counts));
    // The outline is drawn with paths; the label's cells (the bar's track) are polygons.
    paintShapes(g, look, g.querySelectorAll("path"));
    for (const t of g.querySelectorAll("text")) t.setAttribute("fill", look.font);
    const pending = grp.size - Object.values(grp.counts).reduce((a, b) => a + b, 0);
    const counts = { ...grp.counts, pending: (grp.counts.pending || 0) + pending };
    if (grp.text) grp.text.textContent = countsText(counts, looks);
    if (grp.box) {
      let x = grp.box.x;
      for (const s of ORDER) {
        const w = (grp.box.width * (counts[s] || 0)) / grp.size;
        grp.rects[s].setAttribute("x", x);
        grp.rects[s].setAttribute("width", w);
        x += w;
      }
    }
  }

  function apply(states, tips) {
    const nodes = model.get("nodes");
    for (const [task, state] of Object.entries(states)) {
      const before = current[task];
      if (before === state) continue;
      current[task] = state;
      if (before) totals[before] -= 1;
      totals[state] = (totals[state] || 0) + 1;
      const id = nodes[task];
      const grp = groups[id];
      if (grp) {
        if (before) grp.counts[before] -= 1;
        grp.counts[state] = (grp.counts[state] || 0) + 1;
        grp.dirty = true;
      } else {
        paintNode(task, state, tips ? tips[task] : undefined);
      }
    }
    for (const id of Object.keys(groups)) if (groups[id].dirty) paintGroup(id);
    paintHead();
  }

  function paintHead() {
    const total = Object.keys(model.get("states")).length || Object.keys(current).length;
    const known = Object.values(totals).reduce((a, b) => a + b, 0);
    const counts = { ...totals, pending: (totals.pending || 0) + Math.max(0, total - known) };
    const done = total - (counts.pending || 0) - (counts.running || 0) - (counts.retrying || 0);
    el.querySelector(".maze-title").textContent = model.get("title");
    const status = el.querySelector(".maze-status");
    status.textContent = model.get("status");
    status.setAttribute("data-status", model.get("status"));
    el.querySelector(".maze-count").textContent = `${done.toLocaleString("en")}/${total.toLocaleString("en")} done`;
    const bar = el.querySelector(".maze-bar");
    bar.innerHTML = "";
    const legend = el.querySelector(".maze-legend");
    legend.innerHTML = "";
    for (const state of ORDER) {
      const n = counts[state] || 0, look = looks[state];
      if (n && total) {
        const seg = document.createElement("span");
        seg.style.width = `${(100 * n) / total}%`;
        seg.style.background = look.fill === "#FFFFFF" ? "#ddd" : look.fill;
        bar.appendChild(seg);
      }
      if (!n && ["retrying", "cached", "interrupted"].includes(state)) continue;
      const item = document.createElement("span");
      item.innerHTML = `<span class="maze-chip" style="background:${look.fill};color:${look.font};border:1px solid ${look.border}">${look.icon}</span> ${state} <b>${n.toLocaleString("en")}</b>`;
      item.setAttribute("data-legend", state);
      legend.appendChild(item);
    }
  }

  // -- failures, details, the log pane ----------------------------------------------------
  function paintFailures() {
    const box = el.querySelector(".maze-failures");
    const failures = model.get("failures"), failed = model.get("failed");
    box.innerHTML = "";
    if (!failed) return;
    const head = document.createElement("div");
    head.className = "maze-failures-head";
    head.textContent = `${failed.toLocaleString("en")} failed` + (failed > failures.length ? ` (first ${failures.length} listed)` : "") + " — click one for its error and output";
    box.appendChild(head);
    for (const f of failures) {
      const row = document.createElement("div");
      row.className = "maze-failure";
      row.setAttribute("data-task", f.task);
      row.innerHTML = `<span class="maze-chip" style="background:${looks.failed.fill};color:${looks.failed.font}">${looks.failed.icon}</span> <b></b> <span></span>`;
      row.querySelector("b").textContent = f.task;
      row.querySelector("span:last-child").textContent = f.error;
      row.addEventListener("click", () => model.send({ type: "task", task: f.task }));
      box.appendChild(row);
    }
  }

  function showDetail(msg) {
    const box = el.querySelector(".maze-detail");
    box.innerHTML = "";
    const close = document.createElement("button");
    close.textContent = "×";
    close.addEventListener("click", () => { box.innerHTML = ""; });
    box.appendChild(close);
    const head = document.createElement("b");
    const pre = document.createElement("pre");
    if (msg.type === "detail") {
      head.textContent = `${msg.task} (${msg.state})`;
      pre.textContent = (msg.error || "") + (msg.output ? `\n--- output ---\n${msg.output}` : "");
    } else {
      head.textContent = `${msg.counts}`;
      pre.textContent = msg.tasks.map(([t, s]) => `${looks[s].icon} ${t}  ${s}`).join("\n") + (msg.more ? `\n… and ${msg.more.toLocaleString("en")} more` : "");
    }
    box.append(head, pre);
  }

  function paintLog() {
    const n = model.get("log_lines");
    el.querySelector(".maze-log summary").textContent = n ? `output: ${n.toLocaleString("en")} lines (the last ones here)` : "output: none yet";
    el.querySelector(".maze-log pre").textContent = model.get("log");
  }

  model.on("msg:custom", showDetail);
  model.on("change:diff", () => { const d = model.get("diff"); apply(d.states || {}, d.tooltips); });
  model.on("change:states", () => apply(model.get("states"), model.get("tooltips")));
  model.on("change:status", paintHead);
  model.on("change:failures", paintFailures);
  model.on("change:failed", paintFailures);
  model.on("change:log", paintLog);
  model.on("change:svg", draw);
  model.on("change:hint", draw);
  draw();
  apply(model.get("states"), model.get("tooltips"));
  paintFailures();
  paintLog();
}

export default { render };
