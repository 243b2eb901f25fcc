//! Every quantity a guest or a client controls, with its limit.
//!
//! A limit that is hit produces an error that names the constant (or the flag that sets it),
//! so a user can find it here.

/// Largest message value (input, output or published), in bytes: Pulsar's default `maxMessageSize`.
pub const MAX_MESSAGE_SIZE: usize = 5 * 1024 * 1024;
/// Longest message key, in bytes.
pub const MAX_MESSAGE_KEY_LEN: usize = 4 * 1024;
/// Most properties on one message.
pub const MAX_PROPERTIES: usize = 64;
/// Longest property name or value, in bytes.
pub const MAX_PROPERTY_LEN: usize = 4 * 1024;
/// Longest topic name, in bytes, in its fully qualified form.
pub const MAX_TOPIC_NAME_LEN: usize = 512;
/// Longest tenant, namespace or function name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest state key, in bytes.
pub const MAX_STATE_KEY_LEN: usize = 1024;
/// Largest state value, in bytes.
pub const MAX_STATE_VALUE_SIZE: usize = 1024 * 1024;
/// Longest time to live of a state value, in milliseconds (ten years), given to `put-state-ttl`
/// or as a function's `--state-ttl`.
pub const MAX_STATE_TTL_MS: u64 = 10 * 365 * 86_400_000;
/// Most keys one page of a state key listing holds (`list-state-keys`, the admin API's `limit`).
pub const MAX_STATE_KEYS_LISTED: usize = 1_000;
/// Most `publish` calls while processing one message.
pub const MAX_PUBLISHES_PER_MESSAGE: usize = 1_000;
/// Most bytes of state writes (keys and values) and published messages (values and keys) while
/// processing one message: the host holds them until the batch commits.
pub const MAX_WRITTEN_BYTES_PER_MESSAGE: usize = 16 * 1024 * 1024;
/// Most log lines a function writes while processing one message; the rest are dropped, and one
/// line says so.
pub const MAX_LOG_LINES_PER_MESSAGE: usize = 1_000;
/// Longest log line, in bytes; longer lines are cut and marked.
pub const MAX_LOG_LINE_LEN: usize = 16 * 1024;
/// Most bytes a guest may write to stdout and stderr while processing one message; the rest is dropped.
pub const MAX_GUEST_STDIO_PER_MESSAGE: usize = 64 * 1024;
/// Longest user metric name, in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 256;
/// Most distinct user metric names per instance.
pub const MAX_METRICS_PER_INSTANCE: usize = 1_000;
/// Most table elements one instance may have.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Default memory per instance (`--ram`).
pub const DEFAULT_RAM_BYTES: u64 = 128 * 1024 * 1024;
/// Largest `--ram`: a 32-bit linear memory cannot address more.
pub const MAX_RAM_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default time limit for processing one message (`--timeout-ms`).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Largest `--timeout-ms`: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// After a system exception (a trap, the time limit or the memory limit) that is the n-th within
/// [`COOL_DOWN_MEMORY_MS`], an instance rests 2^(n-1) times as long as the failed message ran
/// before its next call, but at most this many times as long: a function that keeps failing that
/// way takes at most 1/65 of a core, and its neighbours the rest.
pub const MAX_COOL_DOWN_FACTOR: u32 = 64;
/// How long a system exception counts towards an instance's rests, in milliseconds (see
/// [`MAX_COOL_DOWN_FACTOR`]).
pub const COOL_DOWN_MEMORY_MS: u64 = 60_000;
/// Longest rest after a system exception, in milliseconds (see [`MAX_COOL_DOWN_FACTOR`]).
pub const MAX_COOL_DOWN_MS: u64 = 60_000;
/// Largest user config or secrets document (`--user-config`, `--secrets`), in bytes.
pub const MAX_CONFIG_SIZE: usize = 1024 * 1024;
/// Most messages one replay runs (`functions replay --range`): each one's results are held and
/// answered at once.
pub const MAX_REPLAY_MESSAGES: usize = 10_000;
/// Longest `--where-error` pattern of a re-drive, in bytes.
pub const MAX_REDRIVE_PATTERN_LEN: usize = 1024;
/// Most bytes of results one replay answers: its outputs, publishes, log lines and state values.
pub const MAX_REPLAY_ANSWER_BYTES: usize = 64 << 20;
/// Most messages processed between two commits; larger batches commit less often.
pub const MAX_BATCH_MESSAGES: usize = 4_096;
/// Longest `--topics-pattern`, in bytes.
pub const MAX_TOPICS_PATTERN_LEN: usize = 1024;
/// Largest compiled `--topics-pattern`, in bytes: bounds the memory a pathological pattern takes.
pub const MAX_TOPICS_PATTERN_COMPILED_SIZE: usize = 1024 * 1024;
/// Most topics one subscription reads (named inputs plus those a pattern matches).
pub const MAX_SUBSCRIPTION_TOPICS: usize = 1_000;
/// Most instances of one function (`--parallelism`).
pub const MAX_PARALLELISM: u32 = 64;
/// Most retries of a failed message before it goes to the dead-letter topic (`--max-message-retries`).
pub const MAX_MESSAGE_RETRIES: u32 = 100;
/// Retries of a failed message when `--max-message-retries` is not given.
pub const DEFAULT_MAX_MESSAGE_RETRIES: u32 = 2;
/// Time after delivery at which an unacknowledged message is delivered again under MANUAL (`--ack-timeout-ms`).
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
/// Largest `--ack-timeout-ms`: one hour.
pub const MAX_ACK_TIMEOUT_MS: u64 = 3_600_000;
/// Most messages delivered to a subscription's consumers and not yet acknowledged; past it, only
/// redeliveries are delivered until acknowledgements come in (Pulsar's `maxUnackedMessagesPerSubscription`).
pub const MAX_UNACKED_MESSAGES: usize = 50_000;
/// Largest component a worker accepts (create or update), in bytes: a Python component is about 18 MB.
pub const MAX_PACKAGE_SIZE: usize = 64 * 1024 * 1024;
/// Largest HTTP request body the worker reads, in bytes: a component plus its config.
pub const MAX_REQUEST_SIZE: usize = MAX_PACKAGE_SIZE + MAX_CONFIG_SIZE;
/// The share of a worker's instances that a tenant gets when the access file sets no quota for
/// it: one quarter, so that the first tenant cannot take every instance slot
/// (`access::Quota::share_of`).
pub const DEFAULT_TENANT_SHARE_DIVISOR: u32 = 4;
/// Shortest bearer token an access file may give, in characters: 32 hex digits are 128 bits.
pub const MIN_TOKEN_LEN: usize = 32;
/// Instances one worker runs when `--max-instances` is not given.
pub const DEFAULT_WORKER_INSTANCES: u32 = 1_024;
/// Largest `--max-instances`: each instance is a thread and a pooled sandbox.
pub const MAX_WORKER_INSTANCES: u32 = 16_384;
/// How long `trigger` waits for the function to process the message it put on the input topic.
pub const TRIGGER_TIMEOUT_MS: u64 = 30_000;
/// Longest a topic receive over HTTP waits for the first message (`waitMs`).
pub const MAX_RECEIVE_WAIT_MS: u64 = 10_000;
/// Largest total size of the source files in a Python or JavaScript function's folder, in bytes:
/// they are all hashed and copied into the build.
pub const MAX_SOURCE_SIZE: usize = 16 * 1024 * 1024;
/// Most records in one count window (`--window-length-count`): a window goes to the function in one call.
pub const MAX_WINDOW_RECORDS: u64 = 100_000;
/// Longest time window or sliding interval (`--window-length-duration-ms`, `--sliding-interval-duration-ms`): one day.
pub const MAX_WINDOW_DURATION_MS: u64 = 86_400_000;
/// Default least time between two moves of the watermark (`--watermark-emit-interval-ms`), as in Pulsar.
pub const DEFAULT_WATERMARK_INTERVAL_MS: u64 = 1_000;
/// Most bytes of record values in one window: a window goes to the function in one call, into its memory.
pub const MAX_WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// Free space the worker keeps in its data directory's file system (`--min-free-disk-bytes`):
/// below it, writes are refused (507) and instances fetch nothing, so that what is stored and
/// accepted can still be committed and the disk never fills.
pub const MIN_FREE_DISK_BYTES: u64 = 256 * 1024 * 1024;
/// Most bytes of messages, as encoded in the answer (escaped text or base64, with key and
/// properties), one REST receive answers with (at least one message is always given).
pub const MAX_RECEIVE_BYTES: usize = 8 * 1024 * 1024;
/// Most REST receives and acknowledgements one tenant has open at once; more are held, then
/// refused (429).
pub const MAX_CONCURRENT_RECEIVES_PER_TENANT: usize = 8;
/// How often a waiting REST receive looks for messages, without holding a thread between looks.
pub const RECEIVE_POLL_MS: u64 = 50;
/// Longest a request that a tenant's rate or cap refuses (a receive, an acknowledgement, a
/// function change) is held, waiting without a thread for the rate or cap to let it through,
/// before its 429 is answered: a client that tries again at once is slowed to what its quota
/// allows, instead of costing the worker a refusal each time.
pub const MAX_REFUSAL_HOLD_MS: u64 = 1_000;
/// Most requests one tenant has held so at once; past it, its refusals are answered at once.
pub const MAX_HELD_REQUESTS_PER_TENANT: usize = 2 * MAX_CONCURRENT_RECEIVES_PER_TENANT;
/// Widest range of record ids a window function's stored progress may span: more is damage (or a
/// forged record), which the instance refuses rather than spin over. Every open window together
/// holds at most MAX_WINDOW_BYTES of values, so only windows of empty records come near it.
pub const MAX_STORED_WINDOW_RECORDS: u64 = 16 * 1024 * 1024;
/// Most guest log lines per second one instance writes into the worker's own log, which every
/// tenant shares (bursts up to a second's worth are let through); the rest go only to the
/// function's log topic, and the worker's log says how many were left out.
pub const MAX_WORKER_LOG_LINES_PER_SECOND: u32 = 100;
/// Most user metric series (a name on one instance) one tenant has in the worker's `/metrics`:
/// the rest are left out, and a comment says how many.
pub const MAX_METRIC_SERIES_PER_TENANT: usize = 10_000;
/// Function changes (creates, updates and deletes) a tenant may make a minute on one worker, ten
/// seconds' worth at once, unless its quota says otherwise (`maxFunctionChangesPerMinute`); more
/// are refused (429) with the time until the next is let through. A change builds, compiles and
/// starts instances, so a tenant changing functions in a loop would take the CPU that its
/// neighbours' functions run on.
pub const FUNCTION_CHANGES_PER_MINUTE: u32 = 60;
/// Bytes of messages a tenant may receive a second over HTTP on one worker (a second's worth, or
/// one answer of MAX_RECEIVE_BYTES, at once), unless its quota says otherwise
/// (`maxReceiveBytesPerSecond`); past it, receives are held, then refused (429) with the time
/// until the tenant may receive again. Encoding answers takes the worker's CPU, so a tenant
/// receiving the largest answers in a loop would take the cores its neighbours' functions run on:
/// the worker serves answers of escaped text at about 175 MiB/s per core (docs/BENCHMARKS.md, "A
/// neighbour beside a hostile tenant over HTTP"), so this default is under 5% of a core.
pub const RECEIVE_BYTES_PER_SECOND: u32 = 8 * 1024 * 1024;
/// Most bytes of one record of the embedded log (a commit's outputs, state changes and cursor
/// moves together); a longer length in a record's header is damage, not a record.
pub const MAX_LOG_RECORD_BYTES: usize = 256 * 1024 * 1024;
/// Bytes after which the embedded log starts a new segment: retention frees whole segments.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Longest a producer is held by a backlog quota with policy `producer_request_hold` before it is
/// refused (429): the topic's subscriptions did not consume enough in that time.
pub const BACKLOG_HOLD_MS: u64 = 10_000;
/// Most messages one `peek-messages` (`-n`) or `examine-message` (`messagePosition`) reaches.
pub const MAX_PEEK_MESSAGES: u64 = 1_000;
/// Longest message TTL a namespace may set (a year): longer is a typo, and keeps a backlog forever.
pub const MAX_MESSAGE_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// Most topics one namespace holds: a tenant creating topics in a loop would fill the worker's
/// memory with their indexes. Appends to a new topic past it are refused.
pub const MAX_TOPICS_PER_NAMESPACE: usize = 10_000;

/// Most recent log lines the worker keeps of each function for `functions logs` and the console.
pub const MAX_LIVE_LOG_LINES: usize = 1_000;
/// Most bytes of log lines the worker keeps of each function (with [`MAX_LIVE_LOG_LINES`], the
/// older go first): with [`MAX_LOG_LINE_LEN`] lines, 64 of them.
pub const MAX_LIVE_LOG_BYTES: usize = 1024 * 1024;
/// Most clients following one function's log at once: each holds a connection and a task.
pub const MAX_LOG_FOLLOWERS_PER_FUNCTION: usize = 4;
/// Most lines one request for a function's log gets (`?tail=`).
pub const MAX_LOG_LINES_PER_REQUEST: usize = MAX_LIVE_LOG_LINES;
