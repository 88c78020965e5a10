// One screenshot of dmue-serve's page after it classified a photo (the README's picture).
//   node tests/web/screenshot.mjs URL PHOTO OUT.png [WIDTH]
import { chromium } from "playwright-core";

const [url, photo, out, width = "1280"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: Number(width), height: 900 } });
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("#model-info dt").length > 2);
  await page.setInputFiles("#file-input", photo);
  await page.waitForFunction(() => /found in/.test(document.getElementById("status").textContent));
  await page.click("#faces > li:first-child .face-select");
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
}
