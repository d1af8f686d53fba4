// Bundles the dashboard into the directory given as the first argument
// (the gateway's OUT_DIR/web): app.js (esbuild, minified), app.css (ours +
// uPlot's), index.html. Everything is local: no CDN.
import { build } from "esbuild";
import { mkdirSync, readFileSync, writeFileSync, copyFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, "dist");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src/main.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
const css =
  readFileSync(join(here, "node_modules/uplot/dist/uPlot.min.css"), "utf8") +
  "\n" +
  readFileSync(join(here, "src/style.css"), "utf8");
writeFileSync(join(out, "app.css"), css);
copyFileSync(join(here, "src/index.html"), join(out, "index.html"));
