// The image viewer: series list, stack scrolling, window/level, zoom/pan, cine and the
// overlay. The page gives the series and the translated strings as JSON data blocks.
import { seriesImages } from "./dicomweb.js";
import { attachKeyboard, attachPointer } from "./input.js";
import { autoWindow, defaultWindow, modalityRange } from "./pixels.js";
import { FrameStore } from "./stack.js";
import { View } from "./view.js";

const root = document.getElementById("viewer");
const strings = JSON.parse(document.getElementById("viewer-strings").textContent);
const config = JSON.parse(document.getElementById("viewer-config").textContent);
const $ = (id) => document.getElementById(id);

function say(key, values = {}) {
  return (strings[key] || key).replace(/%\((\w+)\)s/g, (whole, name) => (name in values ? String(values[name]) : whole));
}

function rounded(value) {
  return Math.abs(value) >= 100 ? Math.round(value) : Math.round(value * 10) / 10;
}

const state = {
  series: null,
  images: [],
  store: null,
  index: 0,
  direction: 1,
  entry: null,
  windowMode: "default", // "default" (the header's), "auto" (the frame's range) or "custom"
  window: null, // the custom window
  tool: window.matchMedia("(pointer: coarse)").matches ? "scroll" : "window",
  playing: null,
  presets: [],
  loadingTimer: null,
  rerenderTimer: null,
};

let view = null;

function setState(name) {
  root.dataset.state = name;
}

function message(text) {
  const element = $("viewer-message");
  element.textContent = text || "";
  element.hidden = !text;
}

function loading(on) {
  clearTimeout(state.loadingTimer);
  if (on) state.loadingTimer = setTimeout(() => { $("viewer-loading").hidden = false; }, 150);
  else $("viewer-loading").hidden = true;
}

// -- window/level -------------------------------------------------------------------------

function windowFor(frame) {
  if (frame.kind === "rendered") {
    if (state.windowMode === "custom") return state.window;
    return frame.info.windows[0] || null;
  }
  if (state.windowMode === "custom") return state.window;
  return state.windowMode === "auto" ? autoWindow(frame) : defaultWindow(frame);
}

function presetsFor(modality) {
  const list = [{ key: "default" }, { key: "auto" }];
  for (const preset of (config.presets[modality] || [])) list.push(preset);
  return list;
}

function fillPresets() {
  const select = $("viewer-preset");
  select.replaceChildren();
  for (const preset of state.presets) {
    const option = document.createElement("option");
    option.value = preset.key;
    option.textContent = say(`preset_${preset.key}`);
    select.append(option);
  }
  const custom = document.createElement("option");
  custom.value = "custom";
  custom.textContent = say("preset_custom");
  custom.hidden = true;
  select.append(custom);
  select.value = "default";
}

function choosePreset(key) {
  const preset = state.presets.find((one) => one.key === key);
  if (!preset) return;
  if (key === "default" || key === "auto") {
    state.windowMode = key;
    state.window = null;
  } else {
    state.windowMode = "custom";
    state.window = { center: preset.center, width: preset.width };
  }
  $("viewer-preset").value = key;
  redraw();
}

function windowBy(dx, dy) {
  const frame = state.entry && state.entry.state === "ready" ? state.entry.frame : null;
  if (!frame || frame.kind === "colour") return;
  const start = windowFor(frame) || { center: 128, width: 256 };
  let range = 256;
  if (frame.kind !== "rendered") {
    const [low, high] = modalityRange(frame);
    range = Math.max(high - low, 64);
  } else if (frame.info.windows[0]) {
    range = Math.max(frame.info.windows[0].width * 2, 64);
  }
  const perPixel = range / 400; // across the viewport changes the window by about its whole range
  state.windowMode = "custom";
  state.window = { center: start.center + dy * perPixel, width: Math.max(1, start.width + dx * perPixel) };
  $("viewer-preset").value = "custom";
  redraw();
}

// -- showing frames -----------------------------------------------------------------------

let drawPending = false;

function redraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    if (state.entry) display(state.entry);
  });
}

function display(entry) {
  state.entry = entry;
  root.dataset.shown = String(state.index);
  loading(false);
  if (entry.state === "failed") {
    view.clear();
    message(say("undecodable"));
    root.dataset.kind = "";
    setState("error");
    labels();
    return;
  }
  const frame = entry.frame;
  message("");
  const applied = windowFor(frame);
  view.show(frame, applied);
  const drawnWith = frame.kind === "rendered" ? frame.window : applied; // the server's window, for rendered frames
  root.dataset.window = drawnWith ? `${drawnWith.center},${drawnWith.width}` : "";
  root.dataset.kind = frame.kind === "rendered" ? "rendered" : "native";
  setState("ready");
  labels();
  if (frame.kind === "rendered") scheduleRerender(frame);
}

function sameWindow(a, b) {
  if (!a || !b) return a === b;
  return a.center === b.center && a.width === b.width;
}

/** Ask the server again for a rendered frame once the window has stopped changing. */
function scheduleRerender(frame) {
  const wanted = state.windowMode === "custom" ? state.window : null;
  const store = state.store;
  store.renderWindow = wanted; // the next frames fetched come with it already
  if (sameWindow(wanted, frame.window)) return;
  clearTimeout(state.rerenderTimer);
  const index = state.index;
  state.rerenderTimer = setTimeout(async () => {
    let entry;
    try {
      entry = await store.rerender(index, wanted);
    } catch (error) {
      if (error instanceof DOMException && error.name === "AbortError") return;
      entry = { state: "failed", error };
    }
    if (store === state.store && index === state.index && entry) display(entry);
  }, 200);
}

function go(index, direction = Math.sign(index - state.index) || 1) {
  if (!state.store || !state.images.length) return;
  const count = state.images.length;
  const target = Math.min(count - 1, Math.max(0, index));
  state.index = target;
  state.direction = direction;
  $("viewer-slider").value = String(target + 1);
  root.dataset.index = String(target);
  const store = state.store;
  const known = store.entry(target);
  if (!known || known.state === "pending") loading(true);
  labels();
  store.focus(target, direction, state.playing ? 12 : 6).then((entry) => {
    if (store === state.store && target === state.index) display(entry);
  });
}

function step(delta) {
  go(state.index + delta, Math.sign(delta) || 1);
}

function labels() {
  const series = state.series;
  $("viewer-series-label").textContent = series && series.number !== null ? say("series", { number: series.number }) : "";
  $("viewer-image-label").textContent = state.images.length
    ? say("image", { number: state.index + 1, count: state.images.length }) : "";
  const frame = state.entry && state.entry.state === "ready" ? state.entry.frame : null;
  const shownWindow = frame ? windowFor(frame) : null;
  $("viewer-window-label").textContent = shownWindow
    ? say("window", { width: rounded(shownWindow.width), center: rounded(shownWindow.center) }) : "";
  $("viewer-zoom-label").textContent = frame ? say("zoom", { zoom: `${Math.round(view.magnification() * 100)}%` }) : "";
  saveLinks(shownWindow);
}

/** "Save image" and "Series as JPG" take the image and the window shown right now. */
function saveLinks(shownWindow) {
  const image = state.images[state.index];
  const windowParam = shownWindow ? `${rounded(shownWindow.center)},${rounded(shownWindow.width)}` : "";
  const study = encodeURIComponent(config.studyUid);
  const save = $("viewer-save-image");
  if (!save) return;  // not offered (a share without download)
  save.hidden = !image;
  if (image) {
    save.href = `/exams/${study}/images/${encodeURIComponent(image.info.sopUid)}.jpg?download=1`
      + `&frame=${image.frame}${windowParam ? `&window=${windowParam}` : ""}`;
  }
  if (state.series) {
    $("viewer-save-series").href = `/exports/new?format=jpg&study=${study}`
      + `&series=${encodeURIComponent(state.series.uid)}${windowParam ? `&window=${windowParam}` : ""}`;
  }
}

// -- cine -----------------------------------------------------------------------------------

function play(on = !state.playing) {
  const button = $("viewer-play");
  clearInterval(state.playing);
  state.playing = null;
  if (on && state.images.length > 1) {
    const fps = Number($("viewer-fps").value) || 10;
    state.playing = setInterval(() => {
      const next = (state.index + 1) % state.images.length;
      const entry = state.store.entry(next);
      if (entry && entry.state !== "pending") go(next, 1); // wait for a frame rather than show a gap
      else state.store.focus(state.index, 1, 12);
    }, 1000 / fps);
  }
  button.textContent = state.playing ? say("pause") : say("play");
  button.setAttribute("aria-pressed", state.playing ? "true" : "false");
}

// -- series ---------------------------------------------------------------------------------

async function openSeries(uid) {
  const series = config.series.find((one) => one.uid === uid) || config.series[0];
  play(false);
  view.clear(); // before the old frames are let go of
  if (state.store) state.store.close();
  state.series = series;
  state.images = [];
  state.store = null;
  state.entry = null;
  state.index = 0;
  state.windowMode = "default";
  state.window = null;
  state.presets = presetsFor(series.modality);
  fillPresets();
  view.reset();
  message("");
  delete root.dataset.shown;
  setState("loading");
  loading(true);
  for (const button of document.querySelectorAll(".viewer-series-item")) {
    button.setAttribute("aria-pressed", button.dataset.series === series.uid ? "true" : "false");
  }
  const address = new URL(window.location.href);
  address.searchParams.set("series", series.uid);
  window.history.replaceState(null, "", address);
  let images;
  try {
    images = await seriesImages(config.dicomweb, config.studyUid, series.uid);
  } catch (error) {
    images = [];
  }
  if (state.series !== series) return; // another series was chosen meanwhile
  if (!images.length) {
    loading(false);
    message(say("seriesFailed"));
    setState("error");
    return;
  }
  state.images = images;
  state.store = new FrameStore(images);
  const slider = $("viewer-slider");
  slider.max = String(Math.max(1, images.length));
  slider.disabled = images.length < 2;
  $("viewer-play").disabled = images.length < 2;
  go(0, 1);
}

// -- wiring -----------------------------------------------------------------------------------

function chooseTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", button.dataset.tool === tool ? "true" : "false");
  }
}

function help(open) {
  const panel = $("viewer-help");
  if (panel.hidden === !open) return;
  panel.hidden = !open;
  $("viewer-help-open").setAttribute("aria-expanded", open ? "true" : "false");
  (open ? $("viewer-help-close") : $("viewer-help-open")).focus();
}

function resetAll() {
  view.reset();
  choosePreset("default");
}

function wire() {
  const viewport = $("viewer-viewport");
  view = new View($("viewer-canvas"), labels);
  attachPointer(viewport, {
    tool: () => state.tool,
    step,
    windowBy,
    pan: (dx, dy) => view.panBy(dx, dy),
    zoomAt: (factor, x, y) => view.zoomAt(factor, x, y),
  });
  attachKeyboard({
    helpOpen: () => !$("viewer-help").hidden,
    key(name, argument) {
      if (name === "step") step(argument);
      else if (name === "first") go(0, 1);
      else if (name === "last") go(state.images.length - 1, -1);
      else if (name === "play") play();
      else if (name === "zoom") view.zoomBy(argument);
      else if (name === "reset") resetAll();
      else if (name === "tool") chooseTool(argument);
      else if (name === "preset" && state.presets[argument]) choosePreset(state.presets[argument].key);
      else if (name === "help") help($("viewer-help").hidden);
      else if (name === "close") help(false);
    },
  });
  $("viewer-slider").addEventListener("input", (event) => go(Number(event.target.value) - 1));
  $("viewer-preset").addEventListener("change", (event) => choosePreset(event.target.value));
  $("viewer-zoom-in").addEventListener("click", () => view.zoomBy(1.25));
  $("viewer-zoom-out").addEventListener("click", () => view.zoomBy(0.8));
  $("viewer-reset").addEventListener("click", resetAll);
  $("viewer-play").addEventListener("click", () => play());
  $("viewer-fps").addEventListener("change", () => { if (state.playing) play(true); });
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => chooseTool(button.dataset.tool));
  }
  for (const button of document.querySelectorAll(".viewer-series-item")) {
    button.addEventListener("click", () => {
      openSeries(button.dataset.series);
      viewport.focus({ preventScroll: true }); // the keys now move through the series just opened
    });
  }
  for (const thumbnail of document.querySelectorAll(".viewer-series-item img")) {
    const hide = () => thumbnail.classList.add("viewer-thumbnail-missing");
    thumbnail.addEventListener("error", hide);
    if (thumbnail.complete && thumbnail.naturalWidth === 0) hide();
  }
  $("viewer-help-open").addEventListener("click", () => help($("viewer-help").hidden));
  $("viewer-help-close").addEventListener("click", () => help(false));
  $("viewer-help").addEventListener("click", (event) => { if (event.target === $("viewer-help")) help(false); });
  chooseTool(state.tool);
  openSeries(config.selected);
}

wire();
