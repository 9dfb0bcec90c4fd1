// Native pixel data to screen pixels: stored values (8/16/32-bit, signed or not, any bits
// stored) -> Modality LUT (rescale slope/intercept) -> VOI window -> MONOCHROME1 inversion.
// Grey frames go through one 32-bit RGBA lookup table per (frame range, window), so a
// frame is drawn with one table read per pixel.

export class DecodeError extends Error {}

function storedArray(info, bytes, count) {
  const { bitsAllocated, signed } = info;
  const bytesPer = bitsAllocated / 8;
  const needed = count * bytesPer;
  if (bytes.byteLength < needed) throw new DecodeError(`frame has ${bytes.byteLength} bytes, needs ${needed}`);
  // typed arrays need an aligned offset: copy when the part starts on an odd byte
  const aligned = bytes.byteOffset % bytesPer === 0 ? bytes : bytes.slice(0, needed);
  const { buffer, byteOffset } = aligned;
  if (bitsAllocated === 8) return signed ? new Int8Array(buffer, byteOffset, count) : new Uint8Array(buffer, byteOffset, count);
  if (bitsAllocated === 16) return signed ? new Int16Array(buffer, byteOffset, count) : new Uint16Array(buffer, byteOffset, count);
  if (bitsAllocated === 32) return signed ? new Int32Array(buffer, byteOffset, count) : new Uint32Array(buffer, byteOffset, count);
  throw new DecodeError(`${bitsAllocated} bits allocated`);
}

/** Keep only the stored bits (bits above High Bit may hold overlays), sign-extending if signed. */
function keepStoredBits(info, data) {
  const { bitsAllocated, bitsStored, highBit, signed } = info;
  const shift = Math.max(0, highBit + 1 - bitsStored);
  if (bitsStored >= bitsAllocated && shift === 0) return data;
  const mask = bitsStored >= 32 ? 0xffffffff : (2 ** bitsStored) - 1;
  const signBit = 2 ** (bitsStored - 1);
  const range = 2 ** bitsStored;
  const unsignedView = bitsAllocated === 8 ? new Uint8Array(data.buffer, data.byteOffset, data.length)
    : bitsAllocated === 16 ? new Uint16Array(data.buffer, data.byteOffset, data.length)
      : new Uint32Array(data.buffer, data.byteOffset, data.length);
  for (let i = 0; i < data.length; i += 1) {
    const raw = (unsignedView[i] >>> shift) & mask;
    data[i] = signed && raw >= signBit ? raw - range : raw;
  }
  return data;
}

function ybrToRgb(data) {
  for (let i = 0; i < data.length; i += 3) {
    const y = data[i]; const cb = data[i + 1] - 128; const cr = data[i + 2] - 128;
    data[i] = Math.max(0, Math.min(255, Math.round(y + 1.402 * cr)));
    data[i + 1] = Math.max(0, Math.min(255, Math.round(y - 0.344136 * cb - 0.714136 * cr)));
    data[i + 2] = Math.max(0, Math.min(255, Math.round(y + 1.772 * cb)));
  }
}

/** A decoded native frame: its stored values and their range. Throws DecodeError if unsupported. */
export function decodeNative(info, bytes) {
  const { rows, columns, samples, photometric, bitsAllocated } = info;
  const pixels = rows * columns;
  if (!pixels) throw new DecodeError("no rows or columns");
  if (samples === 1) {
    if (!photometric.startsWith("MONOCHROME")) throw new DecodeError(`${photometric} needs the server`);
    const data = keepStoredBits(info, storedArray(info, bytes, pixels));
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < pixels; i += 1) {
      const v = data[i];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    return { kind: "grey", info, data, min, max, bytes: data.byteLength };
  }
  if (samples === 3 && bitsAllocated === 8 && (photometric === "RGB" || photometric === "YBR_FULL")) {
    const source = storedArray({ ...info, signed: false }, bytes, pixels * 3);
    let data = new Uint8Array(pixels * 3);
    if (info.planar === 1) {  // RRR…GGG…BBB… -> RGBRGB…
      for (let i = 0; i < pixels; i += 1) {
        data[i * 3] = source[i]; data[i * 3 + 1] = source[pixels + i]; data[i * 3 + 2] = source[2 * pixels + i];
      }
    } else {
      data.set(source);
    }
    if (photometric === "YBR_FULL") ybrToRgb(data);
    return { kind: "colour", info, data, min: 0, max: 255, bytes: data.byteLength };
  }
  throw new DecodeError(`${samples} samples of ${bitsAllocated} bits (${photometric}) need the server`);
}

/** The frame's values after the Modality LUT, as [lowest, highest]. */
export function modalityRange(frame) {
  const { slope, intercept } = frame.info;
  const a = frame.min * slope + intercept;
  const b = frame.max * slope + intercept;
  return [Math.min(a, b), Math.max(a, b)];
}

/** The window a frame opens with: the first one in its header, else its full range. */
export function defaultWindow(frame) {
  if (frame.kind === "colour") return null;
  if (frame.info.windows.length) return { ...frame.info.windows[0] };
  return autoWindow(frame);
}

export function autoWindow(frame) {
  if (frame.kind === "colour") return null;
  const [low, high] = modalityRange(frame);
  return { center: (low + high) / 2, width: Math.max(1, high - low) };
}

// DICOM PS3.3 C.11.2.1.2.1, the "LINEAR" VOI LUT function, onto 0..255.
function voi(value, center, width) {
  const w = Math.max(1, width);
  if (value <= center - 0.5 - (w - 1) / 2) return 0;
  if (value > center - 0.5 + (w - 1) / 2) return 255;
  if (w === 1) return 255;
  return Math.round(((value - (center - 0.5)) / (w - 1) + 0.5) * 255);
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function rgba(grey) {
  return LITTLE_ENDIAN ? (0xff000000 | (grey << 16) | (grey << 8) | grey) >>> 0
    : ((grey << 24) | (grey << 16) | (grey << 8) | 0xff) >>> 0;
}

const LARGEST_TABLE = 1 << 20;

function greyTable(frame, window) {
  const key = `${window.center}/${window.width}`;
  if (frame.table && frame.tableKey === key) return frame.table;
  const { slope, intercept, photometric } = frame.info;
  const invert = photometric === "MONOCHROME1";
  const size = frame.max - frame.min + 1;
  if (size > LARGEST_TABLE) return null;
  const table = new Uint32Array(size);
  for (let i = 0; i < size; i += 1) {
    const grey = voi((frame.min + i) * slope + intercept, window.center, window.width);
    table[i] = rgba(invert ? 255 - grey : grey);
  }
  frame.table = table;
  frame.tableKey = key;
  return table;
}

/** Fill ``image`` (an ImageData of the frame's size) with the frame seen through ``window``. */
export function paint(frame, window, image) {
  const out32 = new Uint32Array(image.data.buffer);
  const { data } = frame;
  if (frame.kind === "colour") {
    const out = image.data;
    const table = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v += 1) table[v] = window ? voi(v, window.center, window.width) : v;
    for (let i = 0, j = 0, k = 0; i < out32.length; i += 1, j += 3, k += 4) {
      out[k] = table[data[j]]; out[k + 1] = table[data[j + 1]]; out[k + 2] = table[data[j + 2]]; out[k + 3] = 255;
    }
    return;
  }
  const table = greyTable(frame, window);
  const min = frame.min;
  if (table) {
    for (let i = 0; i < out32.length; i += 1) out32[i] = table[data[i] - min];
    return;
  }
  // a range too wide for a table (32-bit data): compute each pixel
  const { slope, intercept, photometric } = frame.info;
  const invert = photometric === "MONOCHROME1";
  for (let i = 0; i < out32.length; i += 1) {
    const grey = voi(data[i] * slope + intercept, window.center, window.width);
    out32[i] = rgba(invert ? 255 - grey : grey);
  }
}
