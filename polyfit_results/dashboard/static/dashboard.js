// The dashboard's one script (the Content-Security-Policy allows no other): draws the charts
// whose figures the server builds, and keeps live parts of a page up to date by polling the
// JSON the server offers. Values are only ever set with textContent, value and href: nothing
// from the database becomes markup.
"use strict";

(function () {
  const refreshMs = Number(document.body.dataset.refreshMs) || 2000;
  const plotConfig = {responsive: true, displaylogo: false};

  async function getJSON(url) {
    const response = await fetch(url, {headers: {Accept: "application/json"},
                                       credentials: "same-origin", cache: "no-store"});
    if (!response.ok) {
      throw new Error(url + ": HTTP " + response.status);
    }
    return response.json();
  }

  // A chart: <div class="chart" data-chart="/api/..."> gets the figure and draws it; drawn
  // again (Plotly.react keeps zoom and hidden series) when its data changes, from data-redraw
  // when that names a URL of its own.
  async function draw(el) {
    try {
      const figure = await getJSON(el.dataset.drawn && el.dataset.redraw || el.dataset.chart);
      if (el.dataset.drawn) {
        await Plotly.react(el, figure.data, figure.layout, plotConfig);
      } else {
        await Plotly.newPlot(el, figure.data, figure.layout, plotConfig);
      }
      el.dataset.drawn = String(Number(el.dataset.drawn || 0) + 1);
      el.classList.remove("failed");
    } catch (error) {
      el.classList.add("failed");
      el.dataset.error = String(error);
    }
  }

  // Elements with data-field="KEY" take values[KEY]: a progress bar its value, a link its
  // text (and its href from data-href), anything else its text.
  function fill(root, values) {
    root.querySelectorAll("[data-field]").forEach(function (el) {
      const key = el.dataset.field;
      if (!(key in values)) {
        return;
      }
      if (el.tagName === "PROGRESS") {
        el.value = Number(values[key]);
      } else {
        el.textContent = String(values[key]);
      }
      if (el.dataset.status !== undefined) {  // a status badge: its colour follows its text
        el.className = "status badge " + String(values[key]);
      }
      if (el.tagName === "A" && el.dataset.href && values[el.dataset.href]) {
        el.href = values[el.dataset.href];
      }
    });
  }

  function rowOf(tbody, id) {
    for (const row of tbody.rows) {
      if (row.dataset.id === id) {
        return row;
      }
    }
    return null;
  }

  // The sweep list: every row updated in place; new sweeps (on the first page) added on top.
  function updateSweeps(table, payload) {
    const tbody = table.tBodies[0];
    const template = document.getElementById("sweep-row");
    let previous = null;
    for (const sweep of payload.sweeps) {
      let row = rowOf(tbody, sweep.id);
      if (row === null) {
        if (!table.dataset.grow || template === null) {
          continue;
        }
        row = template.content.firstElementChild.cloneNode(true);
        row.dataset.id = sweep.id;
        tbody.insertBefore(row, previous ? previous.nextSibling : tbody.firstChild);
      }
      fill(row, sweep);
      row.classList.toggle("done", Boolean(sweep.done));
      previous = row;
    }
  }

  // A sweep's progress: the bar and the counts; the charts are drawn again when more jobs
  // have ended.
  function updateProgress(section, payload) {
    fill(section, payload);
    const ended = String(payload.ended);
    if (section.dataset.ended !== undefined && section.dataset.ended !== ended) {
      document.querySelectorAll(".chart[data-redraw]").forEach(draw);
    }
    section.dataset.ended = ended;
  }

  function poll(el, update) {
    let busy = false;
    async function tick() {
      if (busy || document.hidden) {
        return;
      }
      busy = true;
      try {
        update(el, await getJSON(el.dataset.live));
        el.dataset.updates = String(Number(el.dataset.updates || 0) + 1);
        el.classList.remove("stale");
      } catch (error) {
        el.classList.add("stale");
      } finally {
        busy = false;
      }
    }
    window.setInterval(tick, refreshMs);
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (typeof Plotly !== "undefined") {
      document.querySelectorAll(".chart[data-chart]").forEach(draw);
    }
    const sweeps = document.getElementById("sweeps");
    if (sweeps && sweeps.dataset.live) {
      poll(sweeps, updateSweeps);
    }
    const progress = document.getElementById("progress");
    if (progress && progress.dataset.live) {
      poll(progress, updateProgress);
    }
  });
})();
