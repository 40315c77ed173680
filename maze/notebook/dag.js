// Front end of maze's DagWidget: the SVG is laid out once by Graphviz in the
// kernel; here we only recolour its nodes and update the hover text, legend,
// counts and progress bar when the synced `states` change.
const ORDER = ["pending", "running", "retrying", "finished", "cached", "failed", "skipped", "cancelled"];

function render({ model, el }) {
  el.classList.add("maze-dag");
  el.innerHTML = `
    <div class="maze-head"><span class="maze-title"></span><span class="maze-status"></span>
      <div class="maze-bar"></div><span class="maze-count"></span></div>
    <div class="maze-graph"></div><div class="maze-legend"></div>`;
  const graph = el.querySelector(".maze-graph");
  function draw() {
    // The layout arrives once (it is made in the background); states are painted on it.
    graph.innerHTML = "";
    if (model.get("svg")) {
      graph.innerHTML = model.get("svg");
    } else if (model.get("hint")) {
      const pre = document.createElement("pre");
      pre.textContent = model.get("dot") + "\n\n" + model.get("hint");
      graph.appendChild(pre);
    } else {
      graph.textContent = "laying out the graph…";
    }
  }
  draw();

  function paint() {
    const states = model.get("states"), tips = model.get("tooltips");
    const looks = model.get("looks"), nodes = model.get("nodes");
    const counts = {};
    for (const [task, state] of Object.entries(states)) {
      counts[state] = (counts[state] || 0) + 1;
      const g = graph.querySelector(`[id="${nodes[task]}"]`);
      if (!g) continue;
      const look = looks[state];
      g.setAttribute("data-state", state);
      for (const shape of g.querySelectorAll("path, polygon, ellipse")) {
        shape.setAttribute("fill", look.fill);
        shape.setAttribute("stroke", look.border);
        shape.setAttribute("stroke-width", look.width);
        if (look.dash) shape.setAttribute("stroke-dasharray", look.dash);
        else shape.removeAttribute("stroke-dasharray");
      }
      const text = g.querySelector("text");
      if (text) {
        text.setAttribute("fill", look.font);
        text.textContent = `${look.icon} ${task}`;
      }
      let title = g.querySelector("title");
      if (!title) {
        title = document.createElementNS("http://www.w3.org/2000/svg", "title");
        g.prepend(title);
      }
      title.textContent = tips[task] || task;
      for (const a of g.querySelectorAll("a")) {
        a.setAttributeNS("http://www.w3.org/1999/xlink", "title", tips[task] || task);
      }
    }
    const total = Object.keys(states).length;
    const done = total - (counts.pending || 0) - (counts.running || 0) - (counts.retrying || 0);
    el.querySelector(".maze-title").textContent = model.get("title");
    el.querySelector(".maze-status").textContent = model.get("status");
    el.querySelector(".maze-status").setAttribute("data-status", model.get("status"));
    el.querySelector(".maze-count").textContent = `${done}/${total} done`;
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
      if (!n && (state === "retrying" || state === "cached")) continue;
      const item = document.createElement("span");
      item.innerHTML = `<span class="maze-chip" style="background:${look.fill};color:${look.font};border:1px solid ${look.border}">${look.icon}</span> ${state} <b>${n}</b>`;
      item.setAttribute("data-legend", state);
      legend.appendChild(item);
    }
  }
  model.on("change:states", paint);
  model.on("change:status", paint);
  model.on("change:svg", () => { draw(); paint(); });
  model.on("change:hint", () => { draw(); paint(); });
  paint();
}

export default { render };
