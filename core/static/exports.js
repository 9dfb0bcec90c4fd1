// Follows an export's progress on its page: polls its status and updates the bar, the text and
// the panel's data-status (the styles follow it) until it is ready or failed. Without this
// script the page still works with its refresh link.
const panel = document.querySelector("[data-export-status]");
const active = (status) => status === "queued" || status === "running";
const EVERY = 1000, AFTER_A_PROBLEM = 5000;  // ms

function show(state) {
  const bar = document.getElementById("export-bar");
  bar.value = state.percent;
  bar.textContent = `${state.percent}%`;
  bar.hidden = !active(state.status);
  const text = document.getElementById("export-text");
  text.textContent = state.text;
  text.classList.toggle("error", state.status === "failed");
  document.getElementById("export-ready").hidden = state.status !== "ready";
  document.querySelector(".export-leave").hidden = !active(state.status);
  panel.dataset.status = state.status;
}

async function poll() {
  let response;
  try {
    response = await fetch(panel.dataset.exportStatus, {headers: {Accept: "application/json"}});
  } catch {
    return setTimeout(poll, AFTER_A_PROBLEM);  // offline for a moment: try again
  }
  if (response.redirected || [401, 403, 404].includes(response.status)) {
    return location.reload();  // signed out, or no longer there: the page itself says what to do
  }
  if (!response.ok) return setTimeout(poll, AFTER_A_PROBLEM);
  const state = await response.json();
  show(state);
  if (active(state.status)) setTimeout(poll, EVERY);
}

if (panel && active(panel.dataset.status)) setTimeout(poll, EVERY / 2);
