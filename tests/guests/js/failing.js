// A test function: echoes its input, but throws on `fail` and on `crash` reads an undefined field.
export function process(input) {
  const text = new TextDecoder().decode(input);
  if (text === "fail") throw new RangeError("refusing the message fail");
  if (text === "crash") return undefined.field;
  return text;
}
