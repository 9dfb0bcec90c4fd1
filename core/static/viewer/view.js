// The canvas: draws one frame fitted to the viewport, then zoomed and panned. Native frames
// are painted into an off-screen canvas of the frame's own size; the visible canvas keeps
// the device's pixel density so a phone shows a sharp image.
import { paint } from "./pixels.js";

const MIN_ZOOM = 0.25;
const MAX_ZOOM = 16;

export class View {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.offscreen = document.createElement("canvas");
    this.offscreenContext = this.offscreen.getContext("2d");
    this.image = null;
    this.source = null; // what is drawn: the off-screen canvas or a rendered ImageBitmap
    this.aspect = 1;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.onChange = onChange || (() => {});
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.draw();
    }
  }

  /** Show a frame: native ones through ``voiWindow``, rendered ones as they came. */
  show(frame, voiWindow) {
    if (frame.kind === "rendered") {
      this.source = frame.bitmap;
    } else {
      const { rows, columns } = frame.info;
      if (this.offscreen.width !== columns || this.offscreen.height !== rows) {
        this.offscreen.width = columns;
        this.offscreen.height = rows;
        this.image = null;
      }
      if (!this.image) this.image = this.offscreenContext.createImageData(columns, rows);
      paint(frame, voiWindow, this.image);
      this.offscreenContext.putImageData(this.image, 0, 0);
      this.source = this.offscreen;
    }
    this.aspect = frame.info.aspect || 1;
    this.draw();
  }

  clear() {
    this.source = null;
    this.draw();
  }

  fitScale() {
    if (!this.source) return 1;
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.width / ratio;
    const height = this.canvas.height / ratio;
    return Math.min(width / this.source.width, height / (this.source.height * this.aspect));
  }

  /** How many screen (CSS) pixels one image pixel takes, as the overlay shows it. */
  magnification() {
    return this.fitScale() * this.zoom;
  }

  draw() {
    const context = this.context;
    const ratio = window.devicePixelRatio || 1;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#000";
    context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.source) return;
    const scale = this.magnification();
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.translate(this.canvas.width / ratio / 2 + this.panX, this.canvas.height / ratio / 2 + this.panY);
    context.scale(scale, scale * this.aspect);
    context.imageSmoothingEnabled = scale < 4;
    try {
      context.drawImage(this.source, -this.source.width / 2, -this.source.height / 2);
    } catch (error) { // a rendered frame the cache has let go of (closed): show nothing rather than fail
      this.source = null;
    }
    this.onChange();
  }

  /** Zoom by ``factor`` keeping the point (x, y) (CSS pixels from the canvas' top left) still. */
  zoomAt(factor, x, y) {
    const next = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, this.zoom * factor));
    const applied = next / this.zoom;
    const ratio = window.devicePixelRatio || 1;
    const fromCentreX = x - this.canvas.width / ratio / 2;
    const fromCentreY = y - this.canvas.height / ratio / 2;
    this.panX = fromCentreX - (fromCentreX - this.panX) * applied;
    this.panY = fromCentreY - (fromCentreY - this.panY) * applied;
    this.zoom = next;
    this.draw();
  }

  zoomBy(factor) {
    const ratio = window.devicePixelRatio || 1;
    this.zoomAt(factor, this.canvas.width / ratio / 2, this.canvas.height / ratio / 2);
  }

  panBy(dx, dy) {
    this.panX += dx;
    this.panY += dy;
    this.draw();
  }

  reset() {
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.draw();
  }
}
