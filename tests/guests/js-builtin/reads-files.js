// A function that tries to read the machine's files: refused when it is built.
import { readFileSync } from "node:fs";

export function process() {
  return readFileSync("/etc/passwd");
}
