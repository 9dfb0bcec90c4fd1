// DICOMweb (PS3.18) for the viewer: series metadata, raw frames (multipart/related) and
// server-rendered frames. Same-origin fetches, so the session cookie authorises them.

// Transfer syntaxes whose frames are plain pixel values (the server sends them little endian).
export const NATIVE_SYNTAXES = new Set([
  "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
]);

export class FetchError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

function value(dataset, tag, index = 0) {
  const element = dataset[tag];
  if (!element || !Array.isArray(element.Value) || element.Value.length <= index) return undefined;
  return element.Value[index];
}

function number(dataset, tag, fallback, index = 0) {
  const found = Number(value(dataset, tag, index));
  return Number.isFinite(found) ? found : fallback;
}

function text(dataset, tag) {
  const found = value(dataset, tag);
  return found === undefined || found === null ? "" : String(found);
}

/** What the viewer needs of one instance's DICOM JSON. */
export function imageInfo(dataset) {
  const rows = number(dataset, "00280010", 0);
  const spacingRow = number(dataset, "00280030", 0, 0);
  const spacingColumn = number(dataset, "00280030", 0, 1);
  const bitsAllocated = number(dataset, "00280100", 8);
  const bitsStored = number(dataset, "00280101", bitsAllocated);
  const centers = (dataset["00281050"] && dataset["00281050"].Value) || [];
  const widths = (dataset["00281051"] && dataset["00281051"].Value) || [];
  const windowCount = Math.min(centers.length, widths.length);
  const windows = [];
  for (let i = 0; i < windowCount; i += 1) {
    const center = Number(centers[i]);
    const width = Number(widths[i]);
    if (Number.isFinite(center) && Number.isFinite(width) && width >= 1) windows.push({ center, width });
  }
  return {
    sopUid: text(dataset, "00080018"),
    number: number(dataset, "00200013", Number.MAX_SAFE_INTEGER),
    frames: Math.max(1, number(dataset, "00280008", 1)),
    rows,
    columns: number(dataset, "00280011", 0),
    samples: number(dataset, "00280002", 1),
    planar: number(dataset, "00280006", 0),
    photometric: text(dataset, "00280004") || "MONOCHROME2",
    bitsAllocated,
    bitsStored,
    highBit: number(dataset, "00280102", bitsStored - 1),
    signed: number(dataset, "00280103", 0) === 1,
    slope: number(dataset, "00281053", 1) || 1,
    intercept: number(dataset, "00281052", 0),
    windows,
    // the stored syntax, when the server says it (PS3.18 Available Transfer Syntax UID, or the file meta)
    transferSyntax: text(dataset, "00083002") || text(dataset, "00020010"),
    aspect: spacingRow > 0 && spacingColumn > 0 ? spacingRow / spacingColumn : 1,
    isImage: rows > 0,
  };
}

/** The series' images in display order: instances by Instance Number, each frame in turn. */
export async function seriesImages(base, studyUid, seriesUid, signal) {
  const url = `${base}/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}/metadata`;
  const response = await fetch(url, { headers: { Accept: "application/dicom+json" }, credentials: "same-origin", signal });
  if (!response.ok) throw new FetchError(`metadata ${response.status}`, response.status);
  const datasets = await response.json();
  const infos = datasets.map(imageInfo).filter((info) => info.isImage && info.sopUid);
  infos.sort((a, b) => a.number - b.number || (a.sopUid < b.sopUid ? -1 : a.sopUid > b.sopUid ? 1 : 0));
  const images = [];
  for (const info of infos) {
    const instanceUrl = `${base}/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}`
      + `/instances/${encodeURIComponent(info.sopUid)}`;
    for (let frame = 1; frame <= info.frames; frame += 1) {
      images.push({ info, frame, frameUrl: `${instanceUrl}/frames/${frame}` });
    }
  }
  return images;
}

function indexOf(haystack, needle, from = 0) {
  const last = haystack.length - needle.length;
  const first = needle[0];
  for (let i = from; i <= last; i += 1) {
    if (haystack[i] !== first) continue;
    let j = 1;
    while (j < needle.length && haystack[i + j] === needle[j]) j += 1;
    if (j === needle.length) return i;
  }
  return -1;
}

function lastIndexOf(haystack, needle) {
  for (let i = haystack.length - needle.length; i >= 0; i -= 1) {
    let j = 0;
    while (j < needle.length && haystack[i + j] === needle[j]) j += 1;
    if (j === needle.length) return i;
  }
  return -1;
}

function parameter(header, name) {
  const match = new RegExp(`;\\s*${name}\\s*=\\s*("([^"]*)"|[^;\\s]+)`, "i").exec(header || "");
  return match ? (match[2] !== undefined ? match[2] : match[1]) : "";
}

/** The first part of a multipart/related body: its bytes and its headers (lower-cased names). */
export function firstPart(contentType, buffer) {
  const body = new Uint8Array(buffer);
  const boundary = parameter(contentType, "boundary");
  if (!boundary) throw new FetchError("multipart without a boundary");
  const encoder = new TextEncoder();
  const opening = indexOf(body, encoder.encode(`--${boundary}`));
  if (opening < 0) throw new FetchError("multipart without its boundary");
  const headersEnd = indexOf(body, encoder.encode("\r\n\r\n"), opening);
  if (headersEnd < 0) throw new FetchError("multipart part without headers");
  const headers = {};
  const headerText = new TextDecoder().decode(body.subarray(opening, headersEnd));
  for (const line of headerText.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const start = headersEnd + 4;
  // a frame request has one part: it ends at the last delimiter (searching from the end
  // cannot be fooled by pixel bytes that happen to look like one)
  let end = lastIndexOf(body.subarray(start), encoder.encode(`\r\n--${boundary}`));
  if (end < 0) throw new FetchError("multipart without its closing boundary");
  end += start;
  return { bytes: body.subarray(start, end), headers };
}

/** The native pixel bytes of one frame, or a FetchError (not found, not native, not multipart). */
export async function rawFrame(frameUrl, signal) {
  const response = await fetch(frameUrl, {
    // native pixels only: a server that cannot give them answers 406 and the frame is rendered instead
    headers: { Accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1' },
    credentials: "same-origin",
    signal,
  });
  if (!response.ok) throw new FetchError(`frame ${response.status}`, response.status);
  const contentType = response.headers.get("content-type") || "";
  const buffer = await response.arrayBuffer();
  if (/^application\/octet-stream/i.test(contentType)) {
    return { bytes: new Uint8Array(buffer), transferSyntax: parameter(contentType, "transfer-syntax") };
  }
  if (!/^multipart\/related/i.test(contentType)) throw new FetchError(`unexpected ${contentType}`);
  const part = firstPart(contentType, buffer);
  const partType = part.headers["content-type"] || "application/octet-stream";
  if (!/^application\/octet-stream/i.test(partType)) throw new FetchError(`compressed part ${partType}`);
  const transferSyntax = parameter(partType, "transfer-syntax") || parameter(contentType, "transfer-syntax");
  if (transferSyntax && !NATIVE_SYNTAXES.has(transferSyntax)) throw new FetchError(`not native: ${transferSyntax}`);
  return { bytes: part.bytes, transferSyntax };
}

/** The address of the server's rendering of a frame, with a window if the reader chose one. */
export function renderedUrl(frameUrl, voiWindow) {
  const query = new URLSearchParams();
  if (voiWindow) {
    const { center, width } = voiWindow;
    query.set("window", `${Math.round(center * 100) / 100},${Math.round(width * 100) / 100}`);
  }
  const suffix = query.toString();
  return `${frameUrl}/rendered${suffix ? `?${suffix}` : ""}`;
}

/** A server-rendered frame as an ImageBitmap (decoded off the page, so CSP's img-src is not involved). */
export async function renderedFrame(frameUrl, voiWindow, signal) {
  const response = await fetch(renderedUrl(frameUrl, voiWindow), {
    headers: { Accept: "image/png, image/jpeg;q=0.9" },
    credentials: "same-origin",
    signal,
  });
  if (!response.ok) throw new FetchError(`rendered ${response.status}`, response.status);
  const blob = await response.blob();
  if (!/^image\//i.test(blob.type || response.headers.get("content-type") || "")) {
    throw new FetchError(`rendered as ${blob.type}`);
  }
  return createImageBitmap(blob);
}
