"use strict";
// The map page: the class map of a data source (or of a finished classify-raster job) as a picture
// the service draws from the map's COG, its legend, fields classified through POST /v1/fields:classify
// drawn over it, the jobs, and the model's card. Everything comes from this service's REST API; the
// map and the fields share one coordinate system, longitude / latitude, drawn as an equirectangular
// projection around the map's centre (fine at the size of a scene).

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 1000; // the drawing's width in SVG units; its height follows the map's aspect
const state = { legend: new Map(), project: null, pictureUrl: null, source: null, selected: null };

// ---- the API --------------------------------------------------------------------------------------
function apiKeyHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...apiKeyHeaders() } });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch (_) { /* not a problem document */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

// ---- the map ------------------------------------------------------------------------------------
function makeProjection([west, south, east, north]) {
  const kx = Math.cos(((south + north) / 2) * Math.PI / 180); // metres per degree of longitude, relative
  const scale = WIDTH / ((east - west) * kx);
  const height = (north - south) * scale;
  return { height, point: ([lon, lat]) => [(lon - west) * kx * scale, (north - lat) * scale] };
}

async function showMap(descriptionUrl) {
  $("map-status").textContent = "Loading the map…";
  try {
    const description = await (await api(descriptionUrl)).json();
    state.legend = new Map(description.legend.map((entry) => [entry.id, entry]));
    state.project = makeProjection(description.bounds);
    drawLegend(description.legend);
    const picture = await (await api(description.picture)).blob();
    if (state.pictureUrl) URL.revokeObjectURL(state.pictureUrl);
    state.pictureUrl = URL.createObjectURL(picture);
    const image = $("map-image");
    image.setAttribute("href", state.pictureUrl);
    image.setAttribute("width", WIDTH);
    image.setAttribute("height", state.project.height);
    $("map").setAttribute("viewBox", `0 0 ${WIDTH} ${state.project.height}`);
    const dates = description.dates ? `, ${description.dates.join(" to ")}` : "";
    $("map-status").textContent = `${description.width} × ${description.height} px, model ${description.model}${dates} `;
    if (description.download) { // a job's map: the COG itself
      const link = Object.assign(document.createElement("a"), { href: description.download, textContent: "download the COG" });
      $("map-status").append(link);
    }
    $("map-status").dataset.loaded = "true";
  } catch (error) {
    $("map-status").textContent = `No map: ${error.message}`;
    $("map-status").className = "error";
  }
}

function drawLegend(legend) {
  $("legend").replaceChildren(...legend.map((entry) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = entry.colour || "transparent";
    item.append(swatch, `${entry.name} (${entry.code})`);
    return item;
  }));
}

// ---- fields -------------------------------------------------------------------------------------
function ringsOf(geometry) {
  if (!geometry) return [];
  if (geometry.type === "Polygon") return geometry.coordinates;
  if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
  return [];
}

function drawFields(collection) {
  const layer = $("fields");
  layer.replaceChildren();
  if (!state.project) return;
  collection.features.forEach((feature, index) => {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", ringsOf(feature.geometry)
      .map((ring) => "M" + ring.map((p) => state.project.point(p).map((v) => v.toFixed(2)).join(",")).join("L") + "Z")
      .join(" "));
    path.setAttribute("fill-rule", "evenodd");
    const props = feature.properties || {};
    const entry = state.legend.get(props.crop_id);
    if (props.status === "ok" && entry) {
      path.setAttribute("fill", entry.colour);
      path.setAttribute("fill-opacity", (0.1 + 0.6 * props.confidence).toFixed(2)); // the map shows through
    } else {
      path.classList.add("unclassified");
    }
    path.dataset.index = index;
    path.addEventListener("mouseenter", () => { if (!state.selected) showField(feature); });
    path.addEventListener("click", () => selectField(path, feature));
    layer.append(path);
  });
}

function selectField(path, feature) {
  if (state.selected) state.selected.classList.remove("selected");
  state.selected = state.selected === path ? null : path;
  if (state.selected) path.classList.add("selected");
  showField(feature);
}

function showField(feature) {
  const props = feature.properties || {};
  const details = $("field-details");
  details.replaceChildren();
  const line = (label, value) => {
    const p = document.createElement("div");
    p.innerHTML = `<strong>${label}</strong> `;
    p.append(String(value));
    details.append(p);
  };
  const id = props.id ?? props.field_id ?? feature.id;
  if (id !== undefined) line("field", id);
  line("status", props.status);
  if (props.status === "ok") {
    line("crop", `${props.crop} (${props.crop_code})`);
    line("confidence", `${Math.round(100 * props.confidence)}%`);
    const top = Object.entries(props.probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, 3);
    const table = document.createElement("table");
    table.className = "probabilities";
    for (const [code, p] of top) {
      const row = table.insertRow();
      row.insertCell().textContent = code;
      row.insertCell().textContent = `${(100 * p).toFixed(1)}%`;
    }
    line("top 3", "");
    details.append(table);
  }
  if (props.message) line("note", props.message);
}

async function classifyFields() {
  const status = $("classify-status");
  status.className = "";
  status.textContent = "Classifying…";
  $("download").hidden = true;
  try {
    const source = encodeURIComponent(state.source || "");
    const response = await api(`/v1/fields:classify?source=${source}`, {
      method: "POST", headers: { "Content-Type": "application/geo+json" }, body: $("geojson").value,
    });
    const text = await response.text();
    const collection = JSON.parse(text);
    drawFields(collection);
    const download = $("download");
    if (download.href) URL.revokeObjectURL(download.href);
    download.href = URL.createObjectURL(new Blob([text], { type: "application/geo+json" }));
    download.hidden = false;
    const counts = {};
    for (const f of collection.features) counts[f.properties.status] = (counts[f.properties.status] || 0) + 1;
    const others = Object.entries(counts).filter(([s]) => s !== "ok").map(([s, n]) => `${n} ${s}`);
    status.textContent = `${collection.features.length} fields: ${counts.ok || 0} classified` +
      (others.length ? `, ${others.join(", ")}` : "");
  } catch (error) {
    status.className = "error";
    status.textContent = error instanceof SyntaxError ? `Not JSON: ${error.message}` : error.message;
  }
}

function acceptDroppedFiles() {
  const area = $("geojson");
  area.addEventListener("dragover", (event) => { event.preventDefault(); area.classList.add("dragging"); });
  area.addEventListener("dragleave", () => area.classList.remove("dragging"));
  area.addEventListener("drop", async (event) => {
    event.preventDefault();
    area.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) area.value = await file.text();
  });
}

// ---- sources, jobs, model -------------------------------------------------------------------------
async function loadSources() {
  const { sources } = await (await api("/v1/sources")).json();
  const select = $("source");
  select.replaceChildren(...sources.map((s) => new Option(s.name, s.name, s.default, s.default)));
  const chooseSource = async () => {
    const source = sources.find((s) => s.name === select.value);
    state.source = source.name;
    await showMap(source.map);
    const sample = $("load-sample");
    sample.disabled = !source.fields;
    sample.onclick = async () => { $("geojson").value = await (await api(source.fields)).text(); };
  };
  select.onchange = chooseSource;
  await chooseSource();
}

async function refreshJobs() {
  try {
    const { jobs } = await (await api("/v1/jobs?limit=20")).json();
    const list = $("jobs");
    if (!jobs.length) return;
    list.replaceChildren(...jobs.map((job) => {
      const item = document.createElement("li");
      const progress = job.status === "running" ? ` ${job.progress ?? 0}%` : "";
      item.append(`${job.processID} · ${job.status}${progress} `);
      if (job.processID === "classify-raster" && job.status === "successful") {
        const show = document.createElement("button");
        show.type = "button";
        show.textContent = "show map";
        show.onclick = () => showMap(`/v1/jobs/${job.jobID}/map`);
        item.append(show);
      }
      return item;
    }));
  } catch (error) {
    $("jobs").replaceChildren(Object.assign(document.createElement("li"), { className: "hint", textContent: error.message }));
  }
}

async function loadModel() {
  const card = await (await api("/v1/models/default")).json();
  $("model-name").textContent = `${card.card.name} ${card.card.version ?? ""}`.trim();
  $("card-text").textContent = card.model_card || JSON.stringify(card.card, null, 2);
  $("show-card").onclick = () => $("card-dialog").showModal();
}

async function start() {
  $("api-key").value = sessionStorage.getItem("cropstar-api-key") || "";
  $("api-key").onchange = () => { sessionStorage.setItem("cropstar-api-key", $("api-key").value); start(); };
  $("classify").onclick = classifyFields;
  acceptDroppedFiles();
  try {
    await Promise.all([loadModel(), loadSources()]);
  } catch (error) {
    $("map-status").className = "error";
    $("map-status").textContent = error.message;
  }
  refreshJobs();
}

start();
setInterval(refreshJobs, 5000);
