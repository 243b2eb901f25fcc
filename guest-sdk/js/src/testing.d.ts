// Types of the fnhost JavaScript SDK's mock context (testing.js), for `node --test`.

import { Context, FunctionModule, LogLevel, ProcessFunction } from "./index.js";

/** What a mock context is made with; every field has a default. */
export interface MockContextOptions {
  tenant?: string;
  namespace?: string;
  name?: string;
  inputTopics?: string[];
  outputTopic?: string;
  instanceId?: number;
  numInstances?: number;
  userConfig?: Record<string, unknown>;
  secrets?: Record<string, string>;
  logLevel?: LogLevel;
  /** The function's default time to live of state writes, in milliseconds (`--state-ttl`). */
  stateTtl?: number;
}

/** The message a mock context runs a function on. */
export interface MockMessage {
  key?: string;
  properties?: Record<string, string>;
  eventTime?: bigint;
  publishTime?: number | bigint;
  messageId?: string;
  topic?: string;
}

/** A message the function published. */
export interface Published {
  topic: string;
  value: Uint8Array;
  key?: string;
  properties: Record<string, string>;
}

/** A Context whose host is in memory, for unit tests without the host. */
export class MockContext extends Context {
  constructor(options?: MockContextOptions);
  /** [level, text] pairs, in order. */
  readonly logs: [LogLevel, string][];
  readonly published: Published[];
  /** Every observation, by metric name. */
  readonly metrics: Record<string, number[]>;
  /** Bytes by key. */
  readonly stateValues: Map<string, Uint8Array>;
  /** Counters by key. */
  readonly counters: Map<string, bigint>;
  /** How many times the function acknowledged. */
  readonly acked: number;
  /** Moves the mock's clock (which starts at 0) forward by `ms`: state whose time to live passed is gone. */
  advanceClock(ms: number): void;
  /** Runs `fn` on one message as the host would; returns the bytes written to the output topic. */
  process(
    fn: FunctionModule | ProcessFunction | (new () => { process: ProcessFunction }),
    input: string | Uint8Array | number[],
    message?: MockMessage,
  ): Uint8Array | undefined;
}
