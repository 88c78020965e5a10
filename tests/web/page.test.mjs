// dmue-serve's page in a real browser (Debian's Chromium, driven by playwright-core).
//
//   node tests/web/page.test.mjs URL DATA_DIR OUT_DIR
//
// URL: a running dmue-serve (with face detection, --max-body-mb 1). DATA_DIR holds the photos
// the Rust test (tests/tests/web.rs) made: two-faces.png (a synthetic photo with 2 faces),
// big-two-faces.png (the same, 2.5x larger), no-face.png, too-large.png (over 1 MiB),
// not-an-image.png, truncated.png. Screenshots of every state go to OUT_DIR. Each check prints
// "ok ..." or "FAIL ..."; the exit status is the number of failures (capped at 1).
import { chromium } from "playwright-core";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";

const [url, dataDir, outDir] = process.argv.slice(2);
if (!url || !dataDir || !outDir) {
  console.error("usage: node page.test.mjs URL DATA_DIR OUT_DIR");
  process.exit(2);
}
const base = url.replace(/\/$/, "");
const file = (name) => path.join(dataDir, name);
await mkdir(outDir, { recursive: true });

let failures = 0;
function check(ok, what, detail = "") {
  console.log(`${ok ? "ok" : "FAIL"} ${what}${detail ? `: ${detail}` : ""}`);
  if (!ok) failures += 1;
}

// What the API itself says about a photo (the page must show exactly this).
async function apiFaces(name) {
  const body = await readFile(file(name));
  const r = await fetch(`${base}/v1/predict`, {
    method: "POST",
    body,
    headers: { "Content-Type": "image/png" },
  });
  if (!r.ok) throw new Error(`API answered ${r.status} for ${name}: ${await r.text()}`);
  return (await r.json()).results[0].faces;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // A fake camera that always allows: the webcam path runs without hardware.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
  ],
});
const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
const external = [];
context.on("request", (r) => {
  const u = r.url();
  if (!u.startsWith(base) && !u.startsWith("data:") && !u.startsWith("blob:")) external.push(u);
});
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));
page.on("console", (m) => {
  // Chromium logs every non-2xx answer as "Failed to load resource"; those are expected here.
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
    pageErrors.push(m.text());
  }
});
const shot = (name) => page.screenshot({ path: path.join(outDir, name), fullPage: true });

const BOX = [0, 200, 255];
const SELECTED = [255, 208, 0];
const near = (a, b, tol = 40) => a.every((v, i) => Math.abs(v - b[i]) <= tol);
// The canvas pixel at (x, y) in photo pixels.
const pixel = (x, y) =>
  page.evaluate(([x, y]) => {
    const c = document.getElementById("photo-canvas");
    return Array.from(c.getContext("2d").getImageData(Math.round(x), Math.round(y), 1, 1).data.slice(0, 3));
  }, [x, y]);
const cards = () =>
  page.$$eval("#faces > li", (lis) =>
    lis.map((li) => ({
      label: li.dataset.label,
      box: JSON.parse(li.dataset.box),
      button: li.querySelector(".face-select").textContent,
      pressed: li.querySelector(".face-select").getAttribute("aria-pressed"),
      cropAlt: li.querySelector("img.crop")?.alt ?? "",
      cropLoaded: (li.querySelector("img.crop")?.naturalWidth ?? 0) > 0,
      bars: li.querySelectorAll(".bar-row").length,
    })),
  );
const statusText = () => page.textContent("#status");
async function upload(name) {
  await page.setInputFiles("#file-input", file(name));
}
async function waitForResult() {
  await page.waitForFunction(() => {
    const s = document.getElementById("status").textContent;
    const e = document.getElementById("error");
    return /found/.test(s) || !e.hidden;
  });
}
async function errorShown() {
  await page.waitForSelector("#error:not([hidden])");
  return {
    sentence: await page.textContent("#error-sentence"),
    status: await page.getAttribute("#error", "data-status"),
  };
}

try {
  // -- start: the model panel and the synthetic-benchmark warning
  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.querySelectorAll("#model-info dt").length > 2);
  const model = await (await fetch(`${base}/v1/model`)).json();
  const info = await page.textContent("#model-info");
  check(info.includes(model.card.backbone) && info.includes(model.engine) && info.includes(model.card.dataset),
    "model panel shows backbone, engine and dataset", info.slice(0, 160));
  const calibration = model.card.temperature === 1 ? "not calibrated" : model.card.temperature.toFixed(2);
  check(info.includes(calibration), "model panel says whether the probabilities are calibrated", calibration);
  const precision = model.card.int8 ? `int8 (activation ranges: ${model.card.int8.method}` : "float32";
  check(info.includes(precision), "model panel gives the model's precision", precision);
  check(await page.isVisible("#synthetic-warning") === model.synthetic,
    "synthetic warning shown exactly when the model card says so", `synthetic=${model.synthetic}`);
  await shot("01-start.png");

  // -- a 2-face photo: cards, labels, boxes, crops
  const expected = await apiFaces("two-faces.png");
  check(expected.length === 2, "the API finds 2 faces in two-faces.png", `${expected.length}`);
  await upload("two-faces.png");
  await page.waitForFunction((n) => document.querySelectorAll("#faces > li").length === n, expected.length);
  await waitForResult();
  let shown = await cards();
  check(JSON.stringify(shown.map((c) => c.label)) === JSON.stringify(expected.map((f) => f.label)),
    "face cards carry the API's labels, in its order", shown.map((c) => c.label).join(","));
  const boxDiff = Math.max(...shown.flatMap((c, i) => c.box.map((v, k) => Math.abs(v - expected[i].box[k]))));
  check(boxDiff < 0.01, "card boxes are the API's boxes", `max diff ${boxDiff}`);
  check(shown.every((c, i) => c.button.includes(`Face ${i + 1}`) && c.button.includes(c.label)),
    "each card names its face and label");
  check(shown.every((c) => c.cropLoaded && c.cropAlt.length > 10), "each card shows its aligned crop with alt text");
  check(shown.every((c) => c.bars === model.card.classes.length), "each card has one probability bar per class");
  const sortedOk = await page.$$eval("#faces > li", (lis) =>
    lis.every((li) => {
      const v = [...li.querySelectorAll(".bar-value")].map((e) => parseFloat(e.textContent));
      return v.every((x, i) => i === 0 || v[i - 1] >= x);
    }));
  check(sortedOk, "probability bars are sorted, most likely first");
  const ambiguityShown = await page.$$eval("#faces > li", (lis, exp) =>
    lis.every((li, i) => li.textContent.includes(exp[i].ambiguity.toFixed(2))), expected);
  check(ambiguityShown, "each card shows the API's ambiguity");
  for (const [i, f] of expected.entries()) {
    const [x0, y0, x1] = f.box;
    const px = await pixel((x0 + x1) / 2, y0);
    check(near(px, BOX), `face ${i + 1}'s box is drawn where the API says (top edge)`, `rgb ${px}`);
    const [lx, ly] = f.landmarks[2];
    const nose = await pixel(lx, ly);
    check(near(nose, [255, 59, 107]), `face ${i + 1}'s nose landmark is drawn`, `rgb ${nose}`);
  }
  const aria = await page.getAttribute("#photo-canvas", "aria-label");
  check(aria.includes("2 boxed faces"), "the photo's text alternative names the faces", aria);
  await shot("02-two-faces.png");

  // -- selecting: card -> face, face -> card, keyboard
  await page.click("#faces > li:nth-child(2) .face-select");
  shown = await cards();
  const [a0, b0, a1] = expected[1].box;
  check(shown[1].pressed === "true" && shown[0].pressed === "false", "clicking card 2 selects it");
  check(near(await pixel((a0 + a1) / 2, b0), SELECTED), "the selected face's box is highlighted on the photo");
  const canvasBox = await page.locator("#photo-canvas").boundingBox();
  const width = await page.$eval("#photo-canvas", (c) => c.width);
  const k = canvasBox.width / width;
  const [c0, d0, c1, d1] = expected[0].box;
  await page.mouse.click(canvasBox.x + ((c0 + c1) / 2) * k, canvasBox.y + ((d0 + d1) / 2) * k);
  shown = await cards();
  check(shown[0].pressed === "true" && shown[1].pressed === "false", "clicking face 1 on the photo selects its card");
  const focused = await page.evaluate(() => document.activeElement?.textContent ?? "");
  check(focused.startsWith("Face 1"), "and moves the keyboard focus to it", focused);
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  shown = await cards();
  check(shown[1].pressed === "true", "Tab then Enter selects the next card from the keyboard");
  await shot("03-selected.png");

  // -- narrow (phone) window
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, "no horizontal scrolling in a 390 px window", `${overflow} px too wide`);
  await shot("04-narrow.png");
  await page.setViewportSize({ width: 1440, height: 1000 });

  // -- a photo larger than the detector needs: downscaled here, boxes mapped back
  await upload("big-two-faces.png");
  await page.waitForFunction(() => /found in big-two-faces/.test(document.getElementById("status").textContent));
  shown = await cards();
  const scaled = expected.map((f) => f.box.map((v) => v * 2.5));
  const bigDiff = shown.length === 2
    ? Math.max(...shown.flatMap((c, i) => c.box.map((v, j) => Math.abs(v - scaled[i][j]))))
    : Infinity;
  check(bigDiff < 12, "a 1600 px photo is downscaled for upload and its boxes mapped back to it",
    `${shown.length} faces, max box diff ${bigDiff.toFixed(1)} px`);

  // -- no face is a result, not an error
  await upload("no-face.png");
  await page.waitForFunction(() => /No face found/.test(document.getElementById("status").textContent));
  check((await cards()).length === 0 && (await page.isHidden("#error")), "a photo without faces says so, with no error");
  await shot("05-no-face.png");

  // -- errors the server really returns
  for (const [name, status, words] of [
    ["too-large.png", "413", "too large"],
    ["not-an-image.png", "415", "not an image"],
    ["truncated.png", "422", "could not be decoded"],
  ]) {
    await upload(name);
    const e = await errorShown();
    check(e.status === status && e.sentence.includes(words), `${name}: the ${status} sentence`, e.sentence);
    if (status === "413") await shot("06-too-large.png");
  }

  // -- errors the server returns under load or shutdown, and a dead network (intercepted)
  for (const [status, words] of [
    [429, "busy"],
    [503, "not ready"],
    [504, "too long"],
    [500, "failed"],
    ["network", "Cannot reach the server"],
  ]) {
    await page.route("**/v1/predict*", (route) =>
      status === "network"
        ? route.abort("internetdisconnected")
        : route.fulfill({ status, contentType: "application/json", body: '{"error":"test","kind":"test"}' }));
    await upload("two-faces.png");
    const e = await errorShown();
    check(e.status === String(status) && e.sentence.includes(words), `${status}: its sentence`, e.sentence);
    await page.unroute("**/v1/predict*");
  }
  await shot("07-network-down.png");

  // -- drag and drop, and paste
  const bytes = (await readFile(file("two-faces.png"))).toString("base64");
  const transfer = await page.evaluateHandle((b64) => {
    const dt = new DataTransfer();
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    dt.items.add(new File([raw], "dropped.png", { type: "image/png" }));
    return dt;
  }, bytes);
  await page.dispatchEvent("#drop-zone", "drop", { dataTransfer: transfer });
  await page.waitForFunction(() => /found in dropped.png/.test(document.getElementById("status").textContent));
  check((await cards()).length === 2, "a dropped photo is classified");
  await page.evaluate((dt) => document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt })), transfer);
  await page.waitForFunction(() => /found in the pasted image/.test(document.getElementById("status").textContent));
  check((await cards()).length === 2, "a pasted photo is classified");

  // -- the camera (Chromium's fake device): snapshot -> classified
  await page.click("#camera-button");
  await page.waitForFunction(() => document.getElementById("camera-video").videoWidth > 0);
  await shot("08-camera.png");
  await page.click("#snapshot-button");
  await page.waitForFunction(() => /found in the camera photo/.test(document.getElementById("status").textContent));
  check(await page.isHidden("#camera") && await page.isHidden("#error"), "a camera snapshot is sent and the camera closed",
    await statusText());

  // -- a camera that is refused: a sentence, and the focus on the file picker
  const denied = await context.newPage();
  await denied.addInitScript(() => {
    navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException("denied", "NotAllowedError"));
  });
  await denied.goto(`${base}/`);
  await denied.click("#camera-button");
  await denied.waitForSelector("#error:not([hidden])");
  const sentence = await denied.textContent("#error-sentence");
  const focus = await denied.evaluate(() => document.activeElement?.id);
  check(sentence.includes("camera is not available") && focus === "file-input",
    "a refused camera says so and moves to the file picker", `${sentence} / focus ${focus}`);
  await denied.close();

  check(external.length === 0, "the page makes no request outside dmue-serve", external.join(", "));
  check(pageErrors.length === 0, "no script errors or content-security-policy violations", pageErrors.join(" | "));
} catch (e) {
  check(false, "the browser session ran to the end", e.stack || String(e));
  await shot("99-failure.png").catch(() => {});
} finally {
  await browser.close();
}
console.log(`${failures === 0 ? "PASSED" : "FAILED"}: ${failures} failure(s); screenshots in ${outDir}`);
process.exit(failures === 0 ? 0 : 1);
