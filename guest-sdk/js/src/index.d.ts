// Types of the fnhost JavaScript SDK (index.js): the context a function receives and the glue
// the generated component entry uses.

/** Bytes or text, as a state value, a published message or an output. */
export type Bytes = Uint8Array | ArrayBuffer | ArrayBufferView | string;

/** A log level, lowest first. */
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";

/** What `process` may return: text or bytes as they are, a number or boolean as text, anything else as JSON; undefined or null for no output. */
export type Output = Bytes | number | boolean | bigint | object | null | undefined;

/** A counter: a number while it is exact, a BigInt beyond that. */
export type Counter = number | bigint;

/** A context call the host refused; `kind` is the WIT case (`limit-exceeded`, `wrong-kind`, `invalid-argument`, `not-permitted`, or `host-failure` when the host's storage failed and the message will be tried again). */
export class ContextError extends Error {
  constructor(kind: ContextError["kind"], message: string);
  readonly name: "ContextError";
  readonly kind: "limit-exceeded" | "wrong-kind" | "invalid-argument" | "not-permitted" | "host-failure";
}

/** The bytes written to the output topic for a value `process` returned, or undefined for none. */
export function encodeOutput(value: Output): Uint8Array | undefined;

/** The function's durable key-value state as text (`context.state`). */
/** How a state value is written: `ttl` makes it expire that many milliseconds after the commit. */
export interface PutOptions {
  ttl?: number;
}

/** A page of state keys to list: those after `after`, at most `limit` (1 to 1000; default 100). */
export interface ListOptions {
  after?: string;
  limit?: number;
}

export class State {
  /**
   * Stores a string or bytes under `key`; durable when the message's effects commit. With `{ttl}`
   * (milliseconds) the key expires that long after the commit; writing it again gives it a new life.
   */
  put(key: string, value: Bytes, options?: PutOptions): void;
  /** One page of the keys that start with `prefix`, in byte order; expired keys are left out. */
  listKeys(prefix?: string, options?: ListOptions): string[];
  /** Every key that starts with `prefix`, in byte order, a page at a time. */
  keys(prefix?: string): Generator<string, void, undefined>;
  /** The text under `key`, or undefined. */
  get(key: string): string | undefined;
  /** Removes `key`; an absent key is not an error. */
  delete(key: string): void;
}

/** The function's logger; lines below the host's `--log-level` are not sent. */
export class Logger {
  /** Whether lines at `level` are written: check it before building a costly line. */
  isEnabled(level: LogLevel): boolean;
  trace(message: unknown): void;
  debug(message: unknown): void;
  info(message: unknown): void;
  warn(message: unknown): void;
  error(message: unknown): void;
}

/** How a message is published: its key and properties. */
export interface PublishOptions {
  key?: string;
  properties?: Record<string, string>;
}

/** What a function reaches while it processes a message, under Pulsar's names in camelCase. */
export class Context {
  /** The function's state as text. */
  readonly state: State;
  getMessageId(): string;
  getMessageKey(): string | undefined;
  getPartitionKey(): string | undefined;
  /** Milliseconds since the Unix epoch, if the producer gave one. */
  getMessageEventTime(): number | undefined;
  /** Milliseconds since the Unix epoch. */
  getMessagePublishTime(): number;
  getMessageProperties(): Record<string, string>;
  getCurrentMessageTopicName(): string;
  getFunctionName(): string;
  getFunctionTenant(): string;
  getFunctionNamespace(): string;
  getFunctionId(): string;
  getFunctionVersion(): string;
  getInstanceId(): number;
  getNumInstances(): number;
  getInputTopics(): string[];
  getOutputTopic(): string | undefined;
  /** One value of the user config, decoded from JSON, or undefined. */
  getUserConfigValue(key: string): unknown;
  getUserConfigMap(): Record<string, unknown>;
  getSecret(name: string): string | undefined;
  getLogger(): Logger;
  recordMetric(name: string, value: number): void;
  /** Stores a string or bytes under `key`; `{ttl}` (milliseconds) makes it expire. */
  putState(key: string, value: Bytes, options?: PutOptions): void;
  /** The bytes under `key`, or undefined. */
  getState(key: string): Uint8Array | undefined;
  deleteState(key: string): void;
  /** Adds `amount` to the counter `key` and returns its new value. */
  incrCounter(key: string, amount: number | bigint): Counter;
  getCounter(key: string): Counter;
  delCounter(key: string): void;
  /** Publishes to `topic` when this message's effects commit. */
  publish(topic: string, value: Bytes, options?: PublishOptions): void;
  /** Acknowledges the message (for --processing-guarantees MANUAL). */
  ack(): void;
}

/** A message as a window function's records and `eventTime` see it. */
export interface Message {
  value: Uint8Array;
  key?: string;
  properties: [string, string][];
  eventTime?: bigint;
  publishTime: bigint;
  messageId: string;
  topic: string;
  partitionKey?: string;
}

/** The records of a window that fired, oldest first, and its span in milliseconds since the Unix epoch. */
export class Window {
  readonly start: number;
  readonly end: number;
  readonly records: Message[];
  /** The records' values, oldest first. */
  readonly values: Uint8Array[];
}

/** A function: a `process` function, or a class (or object) with a `process` method. */
export type ProcessFunction = (input: Uint8Array, context: Context) => Output;
export type FunctionModule =
  | { default?: unknown; Function?: unknown; process?: unknown; eventTime?: unknown };

/** The callable a function module offers. */
export function functionOf(module: FunctionModule): ProcessFunction;

/** The component's `processBatch` export over the host's context calls (used by the generated entry). */
export function componentProcessBatch(module: FunctionModule, host: object): (messages: Message[]) => void;

/** The component's `processWindow` and `eventTimes` exports (used by the generated entry). */
export function componentWindowFunction(
  module: FunctionModule,
  host: object,
): {
  processWindow(window: { start: bigint; end: bigint }, records: Message[]): Uint8Array | undefined;
  eventTimes(records: Message[]): (bigint | undefined)[];
};
