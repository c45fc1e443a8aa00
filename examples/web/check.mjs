// Open the demo page in headless Chromium (Debian's, driven by playwright-core), compare two
// sentences, print {similarity, tokens, status} as JSON.
// usage: node check.mjs URL "sentence a" "sentence b"   (SPARC_WEB: where package.json installed
// playwright-core; CHROMIUM: the browser, default /usr/bin/chromium)
import { createRequire } from "node:module";

const require = createRequire(`${process.env.SPARC_WEB}/`);
const { chromium } = require("playwright-core");
const [url, a, b] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(error.message));
  await page.goto(url);
  await page.waitForFunction(() => !document.getElementById("compare").disabled
                               || document.getElementById("status").textContent.startsWith("error"), null, { timeout: 120000 });
  await page.fill("#a", a);
  await page.fill("#b", b);
  await page.click("#compare");
  await page.waitForFunction(() => document.getElementById("similarity").textContent !== "–"
                               || document.getElementById("status").textContent.startsWith("error"), null, { timeout: 120000 });
  const read = (id) => page.textContent(`#${id}`);
  console.log(JSON.stringify({ similarity: await read("similarity"), tokens: await read("tokens"),
                               status: await read("status"), problems }));
} finally {
  await browser.close();
}
