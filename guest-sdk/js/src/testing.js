// Unit-test functions with `node --test`, without the host: a context that keeps everything in memory.
import { Context, ContextError, encodeOutput, functionOf } from "./index.js";

/**
 * A Context whose host is in memory. `logs` holds [level, text] pairs, `published` {topic, value,
 * key, properties} objects, `metrics` every observation by name, `stateValues` bytes by key,
 * `counters` counters by key (as BigInt), and `acked` the number of acknowledgements.
 */
export class MockContext extends Context {
  constructor(options = {}) {
    const tenant = options.tenant ?? "public";
    const namespace = options.namespace ?? "default";
    const name = options.name ?? "function";
    const inputs = options.inputTopics ?? [`persistent://${tenant}/${namespace}/input`];
    const mock = {
      logs: [],
      published: [],
      metrics: {},
      stateValues: new Map(),
      counters: new Map(),
      acked: 0,
    };
    const identity = {
      tenant, namespace, name,
      functionId: `${tenant}/${namespace}/${name}`,
      functionVersion: "0".repeat(64),
      instanceId: options.instanceId ?? 0,
      numInstances: options.numInstances ?? 1,
    };
    const config = Object.entries(options.userConfig ?? {}).map(([key, value]) => [key, JSON.stringify(value)]);
    const secrets = options.secrets ?? {};
    const wrongKind = (key, what) => new ContextError("wrong-kind", `the state under '${key}' ${what}`);
    const host = {
      getIdentity: () => identity,
      inputTopics: () => [...inputs],
      outputTopic: () => options.outputTopic,
      userConfigValue: (key) => config.find(([name]) => name === key)?.[1],
      userConfigMap: () => config.map((pair) => [...pair]),
      secret: (key) => secrets[key],
      log: (level, message) => { mock.logs.push([level, message]); },
      minLogLevel: () => options.logLevel ?? "trace",
      recordMetric: (metric, value) => { (mock.metrics[metric] ??= []).push(value); },
      getState: (key) => {
        if (mock.counters.has(key)) {
          const bytes = new Uint8Array(8);
          new DataView(bytes.buffer).setBigInt64(0, mock.counters.get(key));
          return bytes;
        }
        return mock.stateValues.get(key);
      },
      putState: (key, value) => {
        if (mock.counters.has(key)) throw wrongKind(key, "is a counter; use incrCounter");
        mock.stateValues.set(key, Uint8Array.from(value));
      },
      deleteState: (key) => { mock.stateValues.delete(key); mock.counters.delete(key); },
      incrCounter: (key, amount) => {
        if (mock.stateValues.has(key)) throw wrongKind(key, "holds bytes, not a counter");
        mock.counters.set(key, (mock.counters.get(key) ?? 0n) + amount);
        return mock.counters.get(key);
      },
      getCounter: (key) => {
        if (mock.stateValues.has(key)) throw wrongKind(key, "holds bytes, not a counter");
        return mock.counters.get(key) ?? 0n;
      },
      publish: (topic, value, key, properties) => {
        mock.published.push({ topic, value: Uint8Array.from(value), key, properties: Object.fromEntries(properties) });
      },
      ack: () => { mock.acked += 1; },
    };
    super(host, undefined);
    this._inputs = inputs;
    this._runners = new WeakMap();
    // The same arrays and maps the host closures fill.
    this.logs = mock.logs;
    this.published = mock.published;
    this.metrics = mock.metrics;
    this.stateValues = mock.stateValues;
    this.counters = mock.counters;
    Object.defineProperty(this, "acked", { get: () => mock.acked });
  }

  /**
   * Runs `fn` (a module namespace, a class or a process function) on one message, as the host
   * would, and returns the bytes written to the output topic (undefined for none).
   */
  process(fn, input, message = {}) {
    const module = typeof fn === "function" ? { default: fn } : fn;
    if (!this._runners.has(fn)) this._runners.set(fn, functionOf(module));
    const value = typeof input === "string" ? new TextEncoder().encode(input) : Uint8Array.from(input);
    this._message = {
      value,
      key: message.key,
      properties: Object.entries(message.properties ?? {}),
      eventTime: message.eventTime,
      publishTime: BigInt(message.publishTime ?? 0),
      messageId: message.messageId ?? "0",
      topic: message.topic ?? this._inputs[0],
      partitionKey: message.key,
    };
    return encodeOutput(this._runners.get(fn)(value, this));
  }
}
