// The frames of one series: fetched on demand, neighbours prefetched, memory bounded.
// A frame is decoded natively when the server can send its pixel values; otherwise (a
// compressed syntax, or the raw fetch failed) the server renders it.
import { NATIVE_SYNTAXES, rawFrame, renderedFrame } from "./dicomweb.js";
import { decodeNative } from "./pixels.js";

const CONCURRENT = 3;

function memoryBudget() {
  // a phone reports little memory: keep fewer frames there
  const gigabytes = navigator.deviceMemory || 4;
  return Math.min(256, Math.max(48, gigabytes * 24)) * 1024 * 1024;
}

export class FrameStore {
  constructor(images) {
    this.images = images;
    this.entries = new Map(); // index -> {state: "pending"|"ready"|"failed", frame, promise, bytes}
    this.queue = [];
    this.active = 0;
    this.budget = memoryBudget();
    this.used = 0;
    this.current = 0;
    this.renderWindow = null; // the window the reader chose, for frames the server renders
    this.controller = new AbortController();
    this.closed = false;
  }

  close() {
    this.closed = true;
    this.controller.abort();
    for (const entry of this.entries.values()) if (entry.frame && entry.frame.bitmap) entry.frame.bitmap.close();
    this.entries.clear();
    this.queue = [];
    this.used = 0;
  }

  entry(index) {
    return this.entries.get(index);
  }

  /** Ask for ``index`` first, then the next ones in the reading direction, then the others near. */
  focus(index, direction = 1, ahead = 6) {
    this.current = index;
    const wanted = [index];
    for (let step = 1; step <= ahead; step += 1) wanted.push(index + direction * step);
    for (let step = 1; step <= 2; step += 1) wanted.push(index - direction * step);
    this.queue = wanted.filter((i) => i >= 0 && i < this.images.length && !this.entries.has(i));
    this.pump();
    return this.load(index);
  }

  /** A promise of the entry at ``index`` (started now if it was not queued). */
  load(index) {
    const existing = this.entries.get(index);
    if (existing) return existing.promise;
    this.queue = this.queue.filter((i) => i !== index);
    return this.start(index).promise;
  }

  pump() {
    while (this.active < CONCURRENT && this.queue.length) {
      const index = this.queue.shift();
      if (!this.entries.has(index)) this.start(index);
    }
  }

  start(index) {
    const entry = { state: "pending", frame: null, bytes: 0 };
    this.entries.set(index, entry);
    this.active += 1;
    entry.promise = this.fetch(this.images[index]).then((frame) => {
      entry.state = "ready";
      entry.frame = frame;
      entry.bytes = frame.bytes;
      this.used += frame.bytes;
      return entry;
    }, (error) => {
      entry.state = "failed";
      entry.error = error;
      return entry;
    }).finally(() => {
      this.active -= 1;
      if (this.closed) return;
      this.evict();
      this.pump();
    });
    return entry;
  }

  async fetch(image) {
    const { signal } = this.controller;
    const stored = image.info.transferSyntax;
    if (!stored || NATIVE_SYNTAXES.has(stored)) {
      try {
        const { bytes } = await rawFrame(image.frameUrl, signal);
        return decodeNative(image.info, bytes);
      } catch (error) {
        if (signal.aborted) throw error;
        // not native after all, or a form we do not decode: the server renders it
      }
    }
    return this.rendered(image, this.renderWindow);
  }

  async rendered(image, voiWindow) {
    const bitmap = await renderedFrame(image.frameUrl, voiWindow, this.controller.signal);
    return { kind: "rendered", info: image.info, bitmap, window: voiWindow, bytes: bitmap.width * bitmap.height * 4 };
  }

  /** Replace a rendered frame by one rendered with ``voiWindow`` (the server applies windows to those). */
  async rerender(index, voiWindow) {
    const entry = this.entries.get(index);
    if (!entry || entry.state !== "ready" || entry.frame.kind !== "rendered") return entry;
    const frame = await this.rendered(this.images[index], voiWindow);
    if (this.closed || this.entries.get(index) !== entry) {
      frame.bitmap.close();
      return entry;
    }
    this.used += frame.bytes - entry.bytes;
    entry.frame.bitmap.close();
    entry.frame = frame;
    entry.bytes = frame.bytes;
    return entry;
  }

  /** Drop the frames farthest from the one on screen until the cache fits its budget. */
  evict() {
    if (this.used <= this.budget) return;
    const candidates = [...this.entries.entries()]
      .filter(([index, entry]) => entry.state !== "pending" && index !== this.current)
      .sort((a, b) => Math.abs(b[0] - this.current) - Math.abs(a[0] - this.current));
    for (const [index, entry] of candidates) {
      if (this.used <= this.budget * 0.8) break;
      this.entries.delete(index);
      this.used -= entry.bytes;
      if (entry.frame && entry.frame.bitmap) entry.frame.bitmap.close();
    }
  }
}
