// A function written in TypeScript against the SDK's declarations: `tsc --noEmit` (run by
// types.test.js) fails when a declaration and the way authors use the SDK part ways.
import { Context, ContextError, encodeOutput } from "fnhost";
import { MockContext } from "fnhost/testing";

interface Event {
  user_id?: string;
  event_type?: string;
  timestamp?: number;
}

export class SessionDuration {
  process(input: Uint8Array, context: Context): string | undefined {
    const event: Event = JSON.parse(new TextDecoder().decode(input));
    const logger = context.getLogger();
    if (!event.user_id || event.timestamp === undefined) {
      logger.warn(`malformed: ${JSON.stringify(event)}`);
      return undefined;
    }
    if (event.event_type === "login") {
      context.state.put(event.user_id, String(event.timestamp));
      return undefined;
    }
    const login = context.state.get(event.user_id);
    if (login === undefined) return undefined;
    context.state.delete(event.user_id);
    return JSON.stringify({ user_id: event.user_id, duration: event.timestamp - Number(login) });
  }
}

export function refusalKind(error: unknown): ContextError["kind"] | undefined {
  return error instanceof ContextError ? error.kind : undefined;
}

const mock = new MockContext({ userConfig: { threshold: 5 } });
const output: Uint8Array | undefined = mock.process(SessionDuration, '{"user_id":"u","event_type":"login","timestamp":1}');
export const seen: [number, Uint8Array | undefined] = [mock.logs.length, output ?? encodeOutput(null)];
