// The type declarations as a TypeScript author meets them: a function written in TypeScript
// (typed/session.ts) must compile against index.d.ts and testing.d.ts under `strict`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

test("a TypeScript function type-checks against the declarations", () => {
  const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
  const project = fileURLToPath(new URL("typed/tsconfig.json", import.meta.url));
  const run = spawnSync(process.execPath, [tsc, "-p", project], { encoding: "utf8" });
  assert.equal(run.error, undefined, `tsc did not run (npm install in guest-sdk/js installs it): ${run.error}`);
  assert.equal(run.status, 0, `tsc found type errors:\n${run.stdout}${run.stderr}`);
});
