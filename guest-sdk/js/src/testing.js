// Unit-test functions with `node --test`, without the host: a context that keeps everything in memory.
import { Context, ContextError, encodeOutput, functionOf } from "./index.js";

// Ten years, as the host's MAX_STATE_TTL_MS.
const MAX_STATE_TTL_MS = 10n * 365n * 86_400_000n;
const encoder = new TextEncoder();

// Keys in byte order, as the host lists them.
function byBytes(a, b) {
  const [x, y] = [encoder.encode(a), encoder.encode(b)];
  for (let index = 0; index < Math.min(x.length, y.length); index += 1) {
    if (x[index] !== y[index]) return x[index] - y[index];
  }
  return x.length - y.length;
}

/**
 * A Context whose host is in memory. `logs` holds [level, text] pairs, `published` {topic, value,
 * key, properties} objects, `metrics` every observation by name, `stateValues` bytes by key,
 * `counters` counters by key (as BigInt), and `acked` the number of acknowledgements.
 *
 * State with a time to live expires by the mock's clock, which starts at 0 and moves only when the
 * test calls `advanceClock(ms)`; `options.stateTtl` (milliseconds) is the function's default, as
 * `--state-ttl` is on the host. Expired keys leave `stateValues` and `counters`.
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
      nowMs: 0,
      expiries: new Map(),
    };
    const written = (key, ttl) => {
      const ms = ttl ?? (options.stateTtl === undefined ? undefined : BigInt(options.stateTtl));
      if (ms === undefined) mock.expiries.delete(key);
      else mock.expiries.set(key, mock.nowMs + Number(ms));
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
      putState: (key, value) => host.putStateTtl(key, value, undefined),
      putStateTtl: (key, value, ttl) => {
        if (mock.counters.has(key)) throw wrongKind(key, "is a counter; use incrCounter");
        if (ttl !== undefined && (ttl < 1n || ttl > MAX_STATE_TTL_MS)) {
          throw new ContextError("invalid-argument", `a time to live of ${ttl} ms is out of range: give from 1 ms to ten years (MAX_STATE_TTL_MS)`);
        }
        mock.stateValues.set(key, Uint8Array.from(value));
        written(key, ttl);
      },
      listStateKeys: (prefix, after, limit) => {
        if (limit < 1 || limit > 1000) {
          throw new ContextError("limit-exceeded", `a page of ${limit} keys was asked for; give from 1 to 1000 (MAX_STATE_KEYS_LISTED)`);
        }
        return [...new Set([...mock.stateValues.keys(), ...mock.counters.keys()])]
          .sort(byBytes)
          .filter((key) => key.startsWith(prefix) && (after === undefined || byBytes(key, after) > 0))
          .slice(0, limit);
      },
      deleteState: (key) => { mock.stateValues.delete(key); mock.counters.delete(key); mock.expiries.delete(key); },
      incrCounter: (key, amount) => {
        if (mock.stateValues.has(key)) throw wrongKind(key, "holds bytes, not a counter");
        mock.counters.set(key, (mock.counters.get(key) ?? 0n) + amount);
        written(key, undefined);
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
    this._mock = mock;
  }

  /** Moves the mock's clock forward by `ms`; state whose time to live has passed is gone. */
  advanceClock(ms) {
    const mock = this._mock;
    mock.nowMs += Number(ms);
    for (const [key, at] of [...mock.expiries]) {
      if (at <= mock.nowMs) {
        mock.expiries.delete(key);
        mock.stateValues.delete(key);
        mock.counters.delete(key);
      }
    }
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
