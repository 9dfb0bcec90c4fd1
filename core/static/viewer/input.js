// Mouse, touch and pen on the viewport (Pointer Events) and the keyboard, turned into the
// viewer's actions. One pointer drags with the chosen tool (the middle mouse button pans,
// the right one zooms); two pointers pinch to zoom and move together to pan.

const WHEEL_STEP = 50; // wheel units per image on a trackpad; a mouse notch (≥ 50) is one image
const SCROLL_STEP = 12; // dragged pixels per image with the scroll tool or a swipe

export function attachPointer(element, actions) {
  const pointers = new Map();
  let drag = null; // {tool, x, y, carried}
  let pinch = null; // {distance, x, y}

  function position(event) {
    const box = element.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  function pinchState() {
    const [a, b] = [...pointers.values()];
    return { distance: Math.hypot(a.x - b.x, a.y - b.y) || 1, x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
  }

  element.addEventListener("pointerdown", (event) => {
    element.focus({ preventScroll: true });
    try {
      element.setPointerCapture(event.pointerId); // keep the drag when the pointer leaves the canvas
    } catch (error) { /* a pointer already gone */ }
    pointers.set(event.pointerId, position(event));
    if (pointers.size === 2) {
      drag = null; // a second finger turns a drag into a pinch
      pinch = pinchState();
    } else if (pointers.size === 1) {
      const tool = event.pointerType === "mouse"
        ? ({ 0: actions.tool(), 1: "pan", 2: "zoom" })[event.button] : actions.tool();
      const at = pointers.get(event.pointerId);
      drag = tool ? { tool, x: at.x, y: at.y, carried: 0 } : null;
    }
    event.preventDefault();
  });

  element.addEventListener("pointermove", (event) => {
    if (!pointers.has(event.pointerId)) return;
    const at = position(event);
    pointers.set(event.pointerId, at);
    if (pinch && pointers.size === 2) {
      const next = pinchState();
      actions.zoomAt(next.distance / pinch.distance, next.x, next.y);
      actions.pan(next.x - pinch.x, next.y - pinch.y);
      pinch = next;
      return;
    }
    if (!drag) return;
    const dx = at.x - drag.x;
    const dy = at.y - drag.y;
    drag.x = at.x;
    drag.y = at.y;
    if (drag.tool === "window") actions.windowBy(dx, dy);
    else if (drag.tool === "pan") actions.pan(dx, dy);
    else if (drag.tool === "zoom") actions.zoomAt(Math.exp(-dy / 150), at.x, at.y);
    else if (drag.tool === "scroll") {
      drag.carried += dy;
      const steps = Math.trunc(drag.carried / SCROLL_STEP);
      if (steps) {
        drag.carried -= steps * SCROLL_STEP;
        actions.step(-steps); // a finger moving up brings the next image, as a page scrolls
      }
    }
  });

  function release(event) {
    if (!pointers.delete(event.pointerId)) return;
    if (pointers.size < 2) pinch = null;
    if (pointers.size === 0) drag = null;
    // one finger left after a pinch does nothing until it is lifted: no accidental scroll
  }

  element.addEventListener("pointerup", release);
  element.addEventListener("pointercancel", release);
  element.addEventListener("contextmenu", (event) => event.preventDefault());

  let wheel = 0;
  element.addEventListener("wheel", (event) => {
    event.preventDefault();
    const units = event.deltaMode === 1 ? event.deltaY * 33 : event.deltaMode === 2 ? event.deltaY * 400 : event.deltaY;
    if (event.ctrlKey || event.metaKey) { // also a trackpad's pinch
      const at = position(event);
      actions.zoomAt(Math.exp(-units / 300), at.x, at.y);
      return;
    }
    if (Math.abs(units) >= WHEEL_STEP) { // a mouse notch: one image, however large its delta
      wheel = 0;
      actions.step(Math.sign(units));
      return;
    }
    wheel += units; // a trackpad's small deltas add up
    if (Math.abs(wheel) >= WHEEL_STEP) {
      actions.step(Math.sign(wheel));
      wheel = 0;
    }
  }, { passive: false });
}

const KEYS = {
  ArrowDown: ["step", 1], ArrowRight: ["step", 1], ArrowUp: ["step", -1], ArrowLeft: ["step", -1],
  PageDown: ["step", 10], PageUp: ["step", -10], Home: ["first"], End: ["last"],
  " ": ["play"], "+": ["zoom", 1.25], "=": ["zoom", 1.25], "-": ["zoom", 0.8], _: ["zoom", 0.8],
  r: ["reset"], R: ["reset"], w: ["tool", "window"], W: ["tool", "window"], s: ["tool", "scroll"],
  S: ["tool", "scroll"], p: ["tool", "pan"], P: ["tool", "pan"], "?": ["help"], Escape: ["close"],
};

export function attachKeyboard(actions) {
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    const tag = target && target.tagName;
    // form controls keep their own keys (the slider already steps with the arrows)
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    if (tag === "BUTTON" && (event.key === " " || event.key === "Enter")) return;
    if (actions.helpOpen() && event.key !== "?" && event.key !== "Escape") return;
    let found = KEYS[event.key];
    if (!found && /^[1-9]$/.test(event.key)) found = ["preset", Number(event.key) - 1];
    if (!found) return;
    event.preventDefault();
    const [name, argument] = found;
    actions.key(name, argument);
  });
}
