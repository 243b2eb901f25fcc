// A test function: the exclamation example with a question mark, the new code of a replay.
export function process(input) {
  return new TextDecoder().decode(input) + "?";
}
