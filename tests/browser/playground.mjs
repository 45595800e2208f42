// Drives the playground in headless Chromium (the system's) and reports what a person
// would see, as JSON on stdout. Usage: node playground.mjs URL IMAGE_A IMAGE_B NOT_AN_IMAGE SHOT
import { chromium } from "playwright-core";

const [url, imageA, imageB, junk, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const out = {};
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 520 } });
  const consoleErrors = [];
  // Script errors only: the rejected upload's HTTP 400 is logged as a failed resource too.
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && consoleErrors.push(m.text()));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("version").textContent.startsWith("model version"));
  out.version = await page.textContent("#version");
  out.sliders = await page.$$eval("#sliders input", (xs) => xs.map((x) => x.dataset.name));

  // A rejected upload: a clear message, nothing else breaks.
  await page.setInputFiles("#fileB", junk);
  await page.waitForFunction(() => document.getElementById("error").textContent.length > 0);
  out.rejection = await page.textContent("#error");

  await page.setInputFiles("#fileA", imageA);
  await page.waitForFunction(() => document.getElementById("editA").src.startsWith("data:image/png"));
  out.error_after_good_upload = await page.textContent("#error");
  const before = await page.getAttribute("#editA", "src");
  // Drag the first slider to +2 (as a person would with the keyboard: 8 steps of 0.25).
  await page.focus("#sliders input");
  for (let i = 0; i < 8; i++) await page.keyboard.press("ArrowRight");
  const first = out.sliders[0];
  await page.waitForFunction(
    (name) => JSON.parse(document.getElementById("editA").dataset.weights || "{}")[name] === 2, first);
  out.edited_weights = await page.getAttribute("#editA", "data-weights");
  out.edit_changed_image = (await page.getAttribute("#editA", "src")) !== before;

  await page.setInputFiles("#fileB", imageB);
  await page.waitForFunction(() => !document.getElementById("walkButton").disabled);
  await page.click("#walkButton");
  await page.waitForFunction(() => document.getElementById("walkCaption").textContent === "frame 16 of 16");
  out.walk_caption = await page.textContent("#walkCaption");
  out.images_loaded = await page.$$eval("img.big", (xs) => xs.map((x) => x.complete && x.naturalWidth));
  out.console_errors = consoleErrors;
  out.token_left_in_url = page.url().includes("token=");

  // A random draw replaces A, and the sliders' edit starts from the drawn embedding.
  const sampled = page.waitForResponse((r) => r.url().endsWith("/api/sample"));
  const edited = page.waitForResponse((r) => r.url().endsWith("/api/edit"));
  await page.click("#drawA");
  const drawn = await (await sampled).json();
  const editRequest = (await edited).request().postDataJSON();
  await page.waitForFunction(() => document.getElementById("captionA").textContent.startsWith("drawn from"));
  out.draw_caption = await page.textContent("#captionA");
  out.drawn_shown = (await page.getAttribute("#reconA", "src")) === drawn.image;
  out.drawn_width = await page.$eval("#reconA", (x) => x.complete && x.naturalWidth);
  out.edit_from_the_draw = JSON.stringify(editRequest.embedding) === JSON.stringify(drawn.embedding);
  out.console_errors = consoleErrors;
  await page.screenshot({ path: shot, fullPage: true });

  // A direction named like markup (as a hostile directions.json would have it) is shown as
  // text: the server's answer is altered here, on its way to a second page.
  const payload = '<img src=x onerror="window.__xss = 1">';
  const xss = await browser.newPage();
  await xss.route("**/api/info", async (route) => {
    const response = await route.fetch();
    const info = await response.json();
    info.attributes.push({ name: payload, kind: "attribute", auc: 0.5, explained_variance: null });
    await route.fulfill({ response, json: info });
  });
  await xss.goto(url);
  await xss.waitForFunction(() => document.querySelectorAll("#sliders label").length > 0);
  out.xss_label_texts = await xss.$$eval("#sliders label span", (xs) => xs.map((x) => x.textContent));
  out.xss_images_in_sliders = await xss.$$eval("#sliders img", (xs) => xs.length);
  out.xss_ran = await xss.evaluate(() => window.__xss === 1);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
