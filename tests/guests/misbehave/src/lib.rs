//! misbehave: a test guest that does what each message tells it, including the things a
//! sandboxed function must not be able to do.
//!
//! `trap` panics, `loop` never returns, `alloc` allocates without end, `open` reads a host file,
//! `env` lists environment variables, `print` writes to stdout, `big-state` stores a value over
//! the state limit, `fail` returns an error, `fail-once:<text>` returns an error the first time
//! this instance sees it, `spin:<ms>` keeps the CPU busy for that long, `log-levels` says which
//! levels the host writes, `whoami:<text>` comes back as `<instance id>:<text>`;
//! `publish-to:<topic>` publishes to that topic; the floods call the host without end:
//! `log-flood` logs, `put-flood` stores ever new keys, `publish-flood` publishes;
//! `big-output` returns a value over the message size limit, `long-key` stores under a key over
//! the key limit, `stack` recurses without end, `socket` tries to open a TCP connection;
//! `clock-and-random` logs and returns the wall clock's time and a random number;
//! `put:<key>` and `put-ttl:<ms>:<key>` store `v` under the key (the second for that long),
//! `list:<prefix>` returns every key with the prefix, comma-separated, and
//! `list-page:<limit>:<prefix>` returns one page of them, or the host's refusal;
//! anything else comes back as `ok:<message>`.
//! Every message is acknowledged (which only MANUAL notices) except those starting with `noack:`.
//! The integration tests build it with `cargo build --target wasm32-wasip2 --profile guest -p misbehave`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fnhost_guest::{Context, Error, Function, Level};

#[derive(Default)]
struct Misbehave {
    failed_once: HashSet<String>,
}

impl Function for Misbehave {
    type Input = String;
    type Output = String;

    fn process(&mut self, command: String, ctx: &mut Context) -> Result<String, Error> {
        if !command.starts_with("noack:") {
            ctx.ack();
        }
        if let Some(text) = command.strip_prefix("whoami:") {
            return Ok(format!("{}:{text}", ctx.identity().instance_id));
        }
        if command.starts_with("fail-once:") && self.failed_once.insert(command.clone()) {
            return Err(Error::msg("failed once as requested"));
        }
        if let Some(millis) = command.strip_prefix("spin:") {
            let millis: u64 = millis.parse().map_err(|_| Error::msg("spin:<milliseconds>"))?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(millis) {
                std::hint::spin_loop();
            }
            return Ok(command);
        }
        if let Some(first) = command.strip_prefix("metrics-from:") {
            // A thousand metric names of its own per message: a tenant trying to grow /metrics.
            let first: u64 = first.parse().map_err(|_| Error::msg("metrics-from:<first name number>"))?;
            for number in first..first + 1_000 {
                ctx.record_metric(&format!("m{number}"), 1.0);
            }
            return Ok(command);
        }
        if command == "log-levels" {
            ctx.debug("a line at debug level");
            let enabled = |level| ctx.log_enabled(level);
            return Ok(format!("debug:{} warn:{}", enabled(Level::Debug), enabled(Level::Warn)));
        }
        if let Some(key) = command.strip_prefix("put:") {
            ctx.state().put(key, "v")?;
            return Ok(command);
        }
        if let Some(rest) = command.strip_prefix("put-ttl:") {
            let (millis, key) = rest.split_once(':').ok_or_else(|| Error::msg("put-ttl:<ms>:<key>"))?;
            let millis: u64 = millis.parse().map_err(|_| Error::msg("put-ttl:<ms>:<key>"))?;
            return match ctx.put_state_ttl(key, "v", Duration::from_millis(millis)) {
                Ok(()) => Ok(command),
                Err(refused) => Ok(format!("refused: {refused}")),
            };
        }
        if let Some(prefix) = command.strip_prefix("list:") {
            let keys: Vec<String> = ctx.state().keys(prefix).collect::<Result<_, _>>()?;
            return Ok(keys.join(","));
        }
        if let Some(rest) = command.strip_prefix("list-page:") {
            let (limit, prefix) = rest.split_once(':').ok_or_else(|| Error::msg("list-page:<limit>:<prefix>"))?;
            let limit: u32 = limit.parse().map_err(|_| Error::msg("list-page:<limit>:<prefix>"))?;
            return match ctx.state().list_keys(prefix, None, limit) {
                Ok(keys) => Ok(keys.join(",")),
                Err(refused) => Ok(format!("refused: {refused}")),
            };
        }
        if let Some(topic) = command.strip_prefix("publish-to:") {
            ctx.publish(topic, "published")?;
            return Ok(format!("published to {topic}"));
        }
        match command.as_str() {
            "log-flood" => loop {
                ctx.info("flooding the log");
            },
            "put-flood" => {
                for round in 0u64.. {
                    ctx.state().put(&format!("flood-{round}"), vec![7u8; 64 * 1024])?;
                }
                unreachable!("the loop ends only with an error")
            }
            "publish-flood" => loop {
                ctx.publish("flood", "again")?;
            },
            "big-output" => Ok("x".repeat(6 << 20)),
            "long-key" => {
                ctx.state().put(&"k".repeat(2048), "value")?;
                Ok("stored".into())
            }
            "stack" => Ok(format!("depth {}", recurse(std::hint::black_box(1)))),
            "socket" => match std::net::TcpStream::connect("127.0.0.1:9") {
                Ok(_) => Ok("connected to 127.0.0.1:9".into()),
                Err(error) => Err(Error::msg(format!("cannot connect: {error}"))),
            },
            "fail" => Err(Error::msg("failed as requested")),
            "trap" => panic!("boom, as requested"),
            "loop" => {
                // Said first, so that a test knows the guest is in its loop.
                ctx.info("entering an endless loop");
                let mut spins = 0u64;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "open" => match std::fs::read("/etc/passwd") {
                Ok(bytes) => Ok(format!("read {} bytes of /etc/passwd", bytes.len())),
                Err(error) => Err(Error::msg(format!("cannot open /etc/passwd: {error}"))),
            },
            "env" => Ok(format!("{} environment variables", std::env::vars().count())),
            "clock-and-random" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let reading = format!("time {} random {}", now.as_millis(), random_u64());
                ctx.log(Level::Info, &reading);
                Ok(reading)
            }
            "print" => {
                println!("printed to stdout");
                Ok("ok:print".into())
            }
            "big-state" => {
                ctx.state().put("big", vec![0u8; 2 << 20])?;
                Ok("stored".into())
            }
            other => Ok(format!("ok:{other}")),
        }
    }
}

/// Eight bytes from WASI's random source (through the preview 1 call, which the component's
/// adapter forwards to `wasi:random`), as std offers no random numbers of its own.
#[allow(unsafe_code, reason = "a WASI import the SDK does not wrap; the buffer is ours")]
fn random_u64() -> u64 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn random_get(buffer: *mut u8, length: usize) -> u16;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for writes of its length.
    let errno = unsafe { random_get(bytes.as_mut_ptr(), bytes.len()) };
    assert_eq!(errno, 0, "random_get failed");
    u64::from_le_bytes(bytes)
}

/// Recurses until the stack runs out: each frame keeps a buffer the optimiser cannot drop.
#[allow(unconditional_recursion, reason = "overflowing the stack is this command's purpose")]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[7]
}

fnhost_guest::export!(Misbehave);
