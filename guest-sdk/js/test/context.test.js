// The SDK's context, glue and mock, as a function author meets them: `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ContextError, componentProcessBatch, componentWindowFunction, encodeOutput, functionOf } from "../src/index.js";
import { MockContext } from "../src/testing.js";

const text = (bytes) => (bytes === undefined ? undefined : new TextDecoder().decode(bytes));

test("a class is instantiated once per instance and keeps its fields", () => {
  class Counter {
    constructor() { this.seen = 0; }
    process() { this.seen += 1; return this.seen; }
  }
  const context = new MockContext();
  assert.deepEqual([1, 2, 3].map(() => text(context.process(Counter, "x"))), ["1", "2", "3"]);
});

test("modules may export a default class, a Function class or a process function", () => {
  const context = new MockContext();
  class Upper { process(input) { return text(input).toUpperCase(); } }
  assert.equal(text(context.process({ default: Upper }, "a")), "A");
  assert.equal(text(context.process({ Function: Upper }, "b")), "B");
  assert.equal(text(context.process({ process: (input, ctx) => ctx.getFunctionName() }, "")), "function");
  assert.throws(() => functionOf({}), /exports no function/);
});

test("returned values are written as bytes", () => {
  const cases = [
    [undefined, undefined],
    [null, undefined],
    ["text", "text"],
    [new TextEncoder().encode("raw"), "raw"],
    [{ a: 1 }, '{"a":1}'],
    [[1, 2], "[1,2]"],
    [42, "42"],
    [false, "false"],
  ];
  for (const [value, written] of cases) assert.equal(text(encodeOutput(value)), written, String(value));
});

test("message, identity and config under Pulsar's names in camelCase", () => {
  const context = new MockContext({
    name: "f", tenant: "t", namespace: "n", instanceId: 1, numInstances: 2,
    inputTopics: ["persistent://t/n/in"], outputTopic: "persistent://t/n/out",
    userConfig: { threshold: 5 }, secrets: { token: "s3cret" },
  });
  const seen = context.process((input, ctx) => ({
    id: ctx.getMessageId(), key: ctx.getMessageKey(), eventTime: ctx.getMessageEventTime(),
    properties: ctx.getMessageProperties(), topic: ctx.getCurrentMessageTopicName(),
    fqfn: [ctx.getFunctionTenant(), ctx.getFunctionNamespace(), ctx.getFunctionName()],
    instance: [ctx.getInstanceId(), ctx.getNumInstances()],
    inputs: ctx.getInputTopics(), output: ctx.getOutputTopic(),
    threshold: ctx.getUserConfigValue("threshold"), absent: ctx.getUserConfigValue("absent") ?? null,
    config: ctx.getUserConfigMap(), secret: ctx.getSecret("token"),
  }), "", { key: "k", properties: { p: "v" }, eventTime: 7n, messageId: "3" });
  assert.deepEqual(JSON.parse(text(seen)), {
    id: "3", key: "k", eventTime: 7, properties: { p: "v" }, topic: "persistent://t/n/in",
    fqfn: ["t", "n", "f"], instance: [1, 2], inputs: ["persistent://t/n/in"], output: "persistent://t/n/out",
    threshold: 5, absent: null, config: { threshold: 5 }, secret: "s3cret",
  });
});

test("state, counters and their kinds", () => {
  const context = new MockContext();
  context.state.put("k", "v");
  assert.equal(text(context.getState("k")), "v");
  assert.equal(context.state.get("k"), "v");
  assert.equal(context.incrCounter("c", 5), 5);
  assert.equal(context.incrCounter("c", -2n), 3);
  assert.equal(context.getCounter("c"), 3);
  assert.equal(context.incrCounter("big", 2n ** 60n), 2n ** 60n, "beyond 2^53 a counter is a BigInt");
  assert.throws(() => context.incrCounter("k", 1), (error) => error instanceof ContextError && error.kind === "wrong-kind");
  context.delCounter("c");
  context.state.delete("k");
  assert.equal(context.getCounter("c"), 0);
  assert.equal(context.state.get("k"), undefined);
});

test("logs, metrics, publish and ack are recorded", () => {
  const context = new MockContext();
  context.process((input, ctx) => {
    ctx.getLogger().info("i");
    ctx.getLogger().warn("w");
    ctx.recordMetric("latency", 3);
    ctx.publish("other", "hello", { key: "k", properties: { a: 1 } });
    ctx.ack();
  }, "");
  assert.deepEqual(context.logs, [["info", "i"], ["warn", "w"]]);
  assert.deepEqual(context.metrics, { latency: [3] });
  assert.deepEqual(context.published, [{ topic: "other", value: new TextEncoder().encode("hello"), key: "k", properties: { a: "1" } }]);
  assert.equal(context.acked, 1);
  assert.throws(() => context.publish("other", 3), /string or bytes/);
});

test("the component glue finishes each message in order, with throws as error text and host refusals as ContextError", () => {
  const outcomes = [];
  const host = {
    getState() { throw { payload: { tag: "limit-exceeded", val: "MAX_STATE_KEY_LEN is 1024" } }; },
    putState() {}, deleteState() {}, incrCounter() { return 0n; }, getCounter() { return 0n; }, publish() {},
    log() {}, getIdentity() { return {}; },
    // As the host does: stop after a failure, so that the failed message is retried first.
    finishMessage(outcome) {
      outcomes.push(outcome.tag === "ok" ? text(outcome.val) : `err ${outcome.val}`);
      return outcome.tag === "ok";
    },
  };
  const message = (value) => ({ value: new TextEncoder().encode(value), properties: [], publishTime: 0n, messageId: "0", topic: "t" });
  const processBatch = componentProcessBatch({
    process(input, context) {
      const what = text(input);
      if (what === "throw") throw new RangeError("too far");
      if (what === "string") throw "plain";
      if (what === "refused") {
        try { context.getState("k"); } catch (error) { return `${error.kind}: ${error.message}`; }
      }
      return what;
    },
  }, host);
  processBatch(["ok", "refused", "throw", "never reached"].map(message));
  assert.deepEqual(outcomes, ["ok", "limit-exceeded: MAX_STATE_KEY_LEN is 1024", "err RangeError: too far"]);
  processBatch(["string", "never reached"].map(message));
  assert.deepEqual(outcomes.slice(3), ["err plain"]);
});

test("lines below the log level are not sent", () => {
  const context = new MockContext({ logLevel: "warn" });
  context.getLogger().info("dropped");
  context.getLogger().warn("kept");
  assert.deepEqual(context.logs, [["warn", "kept"]]);
  assert.equal(context.getLogger().isEnabled("error"), true);
});

test("a window function gets the window's span and values, the newest record as its message, its event times, and fails with a string", () => {
  const host = { getState() { return undefined; } };
  const record = (value, messageId) => ({ value: new TextEncoder().encode(value), properties: [], publishTime: 0n, messageId, topic: "t" });
  const { processWindow, eventTimes } = componentWindowFunction({
    default: class {
      process(window, context) {
        const values = window.values.map(text);
        if (values.includes("fail")) throw new RangeError("asked to");
        return `${window.start}-${window.end}: ${values.join(",")} (newest ${context.getMessageId()})`;
      }
      eventTime(value) { return text(value) === "b" ? 42 : undefined; }
    },
  }, host);
  assert.deepEqual(eventTimes([record("a", "1"), record("b", "2")]), [undefined, 42n]);
  const output = processWindow({ start: 0n, end: 10n }, [record("a", "1"), record("b", "2")]);
  assert.equal(text(output), "0-10: a,b (newest 2)");
  assert.throws(() => processWindow({ start: 0n, end: 10n }, [record("fail", "3")]), (thrown) => thrown === "RangeError: asked to");
});


test("every export and every context method has a type declaration", async () => {
  const { readFileSync } = await import("node:fs");
  for (const [module, declarations] of [["../src/index.js", "../src/index.d.ts"], ["../src/testing.js", "../src/testing.d.ts"]]) {
    const types = readFileSync(new URL(declarations, import.meta.url), "utf8");
    for (const name of Object.keys(await import(module))) {
      assert.match(types, new RegExp(`export (class|function) ${name}\\b`), `${name} is declared in ${declarations}`);
    }
  }
  const types = readFileSync(new URL("../src/index.d.ts", import.meta.url), "utf8");
  const context = types.slice(types.indexOf("export class Context"), types.indexOf("export interface Message"));
  const { Context } = await import("../src/index.js");
  for (const method of Object.getOwnPropertyNames(Context.prototype).filter((name) => !name.startsWith("_") && name !== "constructor")) {
    assert.match(context, new RegExp(`\\b${method}\\(`), `Context.${method} is declared`);
  }
});

test("state with a time to live expires by the mock's clock and a rewrite lives on", () => {
  const context = new MockContext();
  context.state.put("login", "1", { ttl: 3_600_000 });
  context.putState("rewritten", "1", { ttl: 3_600_000 });
  context.putState("lasting", "1");
  context.advanceClock(1_800_000);
  context.state.put("rewritten", "2", { ttl: 3_600_000 });
  context.advanceClock(1_800_000);
  assert.equal(context.state.get("login"), undefined);
  assert.equal(context.stateValues.has("login"), false);
  assert.equal(context.state.get("rewritten"), "2");
  assert.equal(context.state.get("lasting"), "1");
  assert.throws(() => context.state.put("never", "x", { ttl: 0 }), (error) => error.kind === "invalid-argument" && /MAX_STATE_TTL_MS/.test(error.message));
});

test("the function's default state ttl applies to puts and counters", () => {
  const context = new MockContext({ stateTtl: 60_000 });
  context.state.put("session", "1");
  context.incrCounter("visits", 1);
  context.advanceClock(59_999);
  assert.equal(context.state.get("session"), "1");
  assert.equal(context.getCounter("visits"), 1);
  context.advanceClock(1);
  assert.equal(context.state.get("session"), undefined);
  assert.equal(context.getCounter("visits"), 0);
});

test("keys are listed by prefix in byte order and in pages", () => {
  const context = new MockContext();
  for (const key of ["cart/2", "cart/1", "user/1", "cart/3"]) context.state.put(key, "x");
  context.incrCounter("cart/4", 1);
  assert.deepEqual([...context.state.keys("cart/")], ["cart/1", "cart/2", "cart/3", "cart/4"]);
  assert.deepEqual(context.state.listKeys("cart/", { limit: 2 }), ["cart/1", "cart/2"]);
  assert.deepEqual(context.state.listKeys("cart/", { after: "cart/2", limit: 2 }), ["cart/3", "cart/4"]);
  assert.deepEqual([...context.state.keys()], ["cart/1", "cart/2", "cart/3", "cart/4", "user/1"]);
  assert.throws(() => context.state.listKeys("", { limit: 1001 }), (error) => error.kind === "limit-exceeded");
});
