// Write fnhost functions in JavaScript: the context a function receives, under Pulsar's names in
// camelCase, and the glue that turns an ES module into the component's `process` export.
//
// A function module exports a class with `process(input, context)` (as default export or as
// `Function`), or a `process(input, context)` function. `input` is the payload as a Uint8Array;
// the value returned goes to the output topic: a string as UTF-8, bytes as they are, an object as
// JSON, undefined or null for nothing. Plain JavaScript only: the module runs in a sandbox with
// no Node.js APIs (TextEncoder, TextDecoder, JSON and console are there).

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A context call the host refused; `kind` is the WIT case (`limit-exceeded`, `wrong-kind`, `invalid-argument`, `not-permitted`, `host-failure`). */
export class ContextError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "ContextError";
    this.kind = kind;
  }
}

function toBytes(value, what) {
  if (typeof value === "string") return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`${what} must be a string or bytes, not ${typeof value}`);
}

/** The bytes written to the output topic for a value `process` returned, or undefined for none. */
export function encodeOutput(value) {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string" || value instanceof Uint8Array || value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    return toBytes(value, "the output");
  }
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return encoder.encode(String(value));
  return encoder.encode(JSON.stringify(value));
}

// Counters are 64-bit; a number is returned while it is exact, a BigInt beyond that.
function fromCounter(value) {
  const big = BigInt(value);
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/** Keys one page of `State.keys` asks for. */
const KEYS_PER_PAGE = 1000;

// A write with `options.ttl` (milliseconds) goes to put-state-ttl; without, to put-state, under
// the function's --state-ttl if it has one.
function put(host, key, value, options) {
  const bytes = toBytes(value, "a state value");
  if (options?.ttl === undefined || options?.ttl === null) return host.putState(key, bytes);
  const ttl = Number(options.ttl);
  if (!Number.isFinite(ttl) || ttl < 0) throw new TypeError(`ttl must be a number of milliseconds, not ${options.ttl}`);
  host.putStateTtl(key, bytes, BigInt(Math.round(ttl)));
}

/** The function's durable key-value state as text (`context.state`): put, get, delete, keys. */
export class State {
  constructor(host) {
    this._host = host;
  }
  /**
   * Stores a string or bytes under `key`; durable when the message's effects commit. With
   * `{ttl}` (milliseconds) the key expires that long after the commit: it then reads as absent and
   * the host deletes it; writing it again before then gives it a new life.
   */
  put(key, value, options) {
    put(this._host, key, value, options);
  }
  /** One page of the keys that start with `prefix`, in byte order: after `after`, at most `limit` (1 to 1000). */
  listKeys(prefix = "", { after, limit = 100 } = {}) {
    return this._host.listStateKeys(prefix, after ?? undefined, limit);
  }
  /** Every key that starts with `prefix`, in byte order, fetched a page at a time; expired keys are left out. */
  *keys(prefix = "") {
    let after;
    for (;;) {
      const page = this.listKeys(prefix, { after, limit: KEYS_PER_PAGE });
      yield* page;
      if (page.length < KEYS_PER_PAGE) return;
      after = page[page.length - 1];
    }
  }
  /** The text under `key`, or undefined. */
  get(key) {
    const value = this._host.getState(key);
    return value === undefined ? undefined : decoder.decode(value);
  }
  /** Removes `key`; an absent key is not an error. */
  delete(key) {
    this._host.deleteState(key);
  }
}

/** The function's logger (`context.getLogger()`). */
const LEVEL_RANKS = { trace: 0, debug: 1, info: 2, warn: 3, error: 4 };

/** The function's logger; lines below the host's `--log-level` are not sent. */
export class Logger {
  constructor(host) {
    this._host = host;
    this._minRank = undefined;
  }
  /** Whether lines at `level` ("debug", "info", ...) are written: check it before building a costly line. */
  isEnabled(level) {
    this._minRank ??= LEVEL_RANKS[this._host.minLogLevel()];
    return LEVEL_RANKS[level] >= this._minRank;
  }
  _log(level, message) {
    if (this.isEnabled(level)) this._host.log(level, String(message));
  }
  trace(message) { this._log("trace", message); }
  debug(message) { this._log("debug", message); }
  info(message) { this._log("info", message); }
  warn(message) { this._log("warn", message); }
  error(message) { this._log("error", message); }
}

/** What a function reaches while it processes a message; `host` has wit/function.wit's context calls. */
export class Context {
  constructor(host, message) {
    this._host = host;
    this._message = message;
    this._identity = undefined;
    this.state = new State(host);
    this._logger = new Logger(host);
  }
  _who() {
    if (this._identity === undefined) this._identity = this._host.getIdentity();
    return this._identity;
  }
  getMessageId() { return this._message.messageId; }
  getMessageKey() { return this._message.key; }
  getPartitionKey() { return this._message.partitionKey; }
  getMessageEventTime() { return this._message.eventTime === undefined ? undefined : Number(this._message.eventTime); }
  getMessagePublishTime() { return Number(this._message.publishTime); }
  getMessageProperties() { return Object.fromEntries(this._message.properties); }
  getCurrentMessageTopicName() { return this._message.topic; }
  getFunctionName() { return this._who().name; }
  getFunctionTenant() { return this._who().tenant; }
  getFunctionNamespace() { return this._who().namespace; }
  getFunctionId() { return this._who().functionId; }
  getFunctionVersion() { return this._who().functionVersion; }
  getInstanceId() { return this._who().instanceId; }
  getNumInstances() { return this._who().numInstances; }
  getInputTopics() { return this._host.inputTopics(); }
  getOutputTopic() { return this._host.outputTopic(); }
  /** One value of the user config, decoded from JSON, or undefined. */
  getUserConfigValue(key) {
    const text = this._host.userConfigValue(key);
    return text === undefined ? undefined : JSON.parse(text);
  }
  getUserConfigMap() {
    return Object.fromEntries(this._host.userConfigMap().map(([key, text]) => [key, JSON.parse(text)]));
  }
  getSecret(name) { return this._host.secret(name); }
  getLogger() { return this._logger; }
  recordMetric(name, value) { this._host.recordMetric(name, Number(value)); }
  /** Stores a string or bytes under `key`; `{ttl}` (milliseconds) makes it expire (see `State.put`). */
  putState(key, value, options) { put(this._host, key, value, options); }
  /** The bytes under `key`, or undefined. */
  getState(key) { return this._host.getState(key); }
  deleteState(key) { this._host.deleteState(key); }
  /** Adds `amount` to the counter `key` and returns its new value. */
  incrCounter(key, amount) { return fromCounter(this._host.incrCounter(key, BigInt(amount))); }
  getCounter(key) { return fromCounter(this._host.getCounter(key)); }
  delCounter(key) { this._host.deleteState(key); }
  /** Publishes to `topic` when this message's effects commit; `options` may hold `key` and `properties`. */
  publish(topic, value, options = {}) {
    const properties = Object.entries(options.properties ?? {}).map(([name, text]) => [String(name), String(text)]);
    this._host.publish(topic, toBytes(value, "a published message"), options.key, properties);
  }
  /** Acknowledges the message (for --processing-guarantees MANUAL). */
  ack() { this._host.ack(); }
}

/** Finds the callable a function module offers: a class's `process` (one object per instance) or a function. */
export function functionOf(module) {
  return methodsOf(module).process;
}

/**
 * A module's `process` and, for window functions, `eventTime` (undefined if it has none), on one
 * object per instance when the module exports a class.
 */
function methodsOf(module) {
  const candidate = module.default ?? module.Function ?? module.process;
  if (typeof candidate !== "function" && typeof candidate?.process !== "function") {
    throw new TypeError("the module exports no function: export a class with process(input, context), or a process(input, context) function");
  }
  if (typeof candidate === "function" && typeof candidate.prototype?.process === "function") {
    let instance;
    const object = () => (instance ??= new candidate());
    const eventTime = typeof candidate.prototype.eventTime === "function" ? (value, message) => object().eventTime(value, message) : undefined;
    return { process: (input, context) => object().process(input, context), eventTime };
  }
  if (typeof candidate === "function") {
    return { process: candidate, eventTime: typeof module.eventTime === "function" ? module.eventTime : undefined };
  }
  const eventTime = typeof candidate.eventTime === "function" ? (value, message) => candidate.eventTime(value, message) : undefined;
  return { process: (input, context) => candidate.process(input, context), eventTime };
}

function describe(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

// The host's context-error results arrive as thrown values with a `payload` of `{tag, val}`.
// Fixed arity rather than rest arguments: StarlingMonkey interprets, and a spread costs per call.
function refusable(call) {
  return (a, b, c, d) => {
    try {
      return call(a, b, c, d);
    } catch (error) {
      if (error?.payload?.tag !== undefined) throw new ContextError(error.payload.tag, error.payload.val);
      throw error;
    }
  };
}

/**
 * The component's `processBatch` export: runs `module`'s function on each message with a context
 * over `host`, and finishes each message with the host until the batch ends or the host says stop.
 */
export function componentProcessBatch(module, host) {
  const run = functionOf(module);
  const wrapped = { ...host };
  for (const name of ["getState", "putState", "putStateTtl", "listStateKeys", "deleteState", "incrCounter", "getCounter", "publish"]) {
    wrapped[name] = refusable(host[name]);
  }
  const context = new Context(wrapped, undefined);
  return (messages) => {
    // The operator may change the level while the function runs: ask again each batch.
    context._logger._minRank = undefined;
    for (const message of messages) {
      context._message = message;
      let outcome;
      try {
        outcome = { tag: "ok", val: encodeOutput(run(message.value, context)) };
      } catch (error) {
        outcome = { tag: "err", val: describe(error) };
      }
      if (!host.finishMessage(outcome)) return;
    }
  };
}

/**
 * The records of a window that fired, oldest first, and its span in milliseconds since the Unix
 * epoch: time windows cover [start, end); a count window starts at its first record's time and
 * ends just after its last one's. A window function is a class with `process(window, context)`
 * (or such a function), built with window settings such as `--window-length-count`.
 */
export class Window {
  constructor(start, end, records) {
    this.start = Number(start);
    this.end = Number(end);
    /** The records (with `value`, `key`, `properties`, `eventTime`, ...), oldest first. */
    this.records = records;
  }
  /** The records' values (Uint8Array), oldest first. */
  get values() { return this.records.map((record) => record.value); }
}

/**
 * The component's `processWindow` and `eventTimes` exports (the window-function world): runs
 * `module`'s function on each window with a context over `host`, in which the context's message is
 * the window's newest record; under --event-time, its `eventTime(value, message)`, if it has one,
 * gives each record's event time in milliseconds (undefined: the event time the producer gave).
 */
export function componentWindowFunction(module, host) {
  const { process, eventTime } = methodsOf(module);
  const wrapped = { ...host };
  for (const name of ["getState", "putState", "putStateTtl", "listStateKeys", "deleteState", "incrCounter", "getCounter", "publish"]) {
    wrapped[name] = refusable(host[name]);
  }
  const context = new Context(wrapped, undefined);
  const processWindow = (window, records) => {
    context._logger._minRank = undefined;
    context._message = records[records.length - 1];
    try {
      return encodeOutput(process(new Window(window.start, window.end, records), context));
    } catch (error) {
      // A thrown string is the export's `err`; a thrown Error would trap the instance.
      throw describe(error);
    }
  };
  const eventTimes = (records) => records.map((record) => {
    const time = eventTime?.(record.value, record);
    return time === undefined || time === null ? undefined : BigInt(time);
  });
  return { processWindow, eventTimes };
}
