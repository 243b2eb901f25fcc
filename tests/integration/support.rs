//! Shared helpers: the guest components, a scratch data directory and a way to run `fnhost`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

/// The example and test guests, built once per test run for `wasm32-wasip2`.
const GUESTS: [&str; 9] = [
    "session-duration",
    "exclamation",
    "word-count",
    "misbehave",
    "window-list",
    "user-counts",
    "sliding-average",
    "trap-at-start",
    "foreign-import",
];

/// The path of a guest component, building all guests on first use.
pub fn guest(crate_name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_guests);
    dir.join(format!("{}.wasm", crate_name.replace('-', "_")))
}

fn build_guests() -> PathBuf {
    // A target directory of its own, so that this nested build never waits on the lock of the
    // build that is running these tests.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    fnhost_test_support::build_guests(workspace(), &target, &GUESTS).unwrap_or_else(|error| panic!("{error}"))
}

/// The repository's root.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is inside the workspace")
}

/// The `fnhost` binary with a component cache shared by every test and kept between runs (built
/// Python and JavaScript components take seconds each), and the JavaScript toolchain (componentize-js
/// and esbuild) that `npm install` puts in guest-sdk/js when none is on PATH.
/// JavaScript is built for the interpreter whether or not weval is on PATH, so that every machine
/// tests the same thing; the test of ahead-of-time builds removes `FNHOST_WEVAL`.
pub fn fnhost_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fnhost"));
    command.env("FNHOST_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("fnhost-cache"));
    command.env("FNHOST_WEVAL", fnhost::guest_build::WEVAL_OFF);
    for (variable, program) in [("FNHOST_COMPONENTIZE_JS", "componentize-js"), ("FNHOST_ESBUILD", "esbuild")] {
        let local = workspace().join("guest-sdk/js/node_modules/.bin").join(program);
        if std::env::var_os(variable).is_none() && local.exists() {
            command.env(variable, local);
        }
    }
    command
}

/// The operator's token of [`Worker::start_with_tenants`] (and the tenant tests' workers).
pub const OPERATOR: &str = "operator-0123456789abcdef0123456789abcdef";
/// Tenant `acme`'s token.
pub const ACME: &str = "acme-0123456789abcdef0123456789abcdef00000";
/// Tenant `globex`'s token.
pub const GLOBEX: &str = "globex-0123456789abcdef0123456789abcdef000";

/// A scratch data directory and the `fnhost` binary pointed at it.
pub struct Fnhost {
    dir: tempfile::TempDir,
}

/// What one run printed.
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

impl Fnhost {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("a temporary directory") }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command for `fnhost ARGS --data-dir DIR`.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut command = fnhost_command();
        command.args(args).arg("--data-dir").arg(self.data_dir());
        command
    }

    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Run {
        let Output { status, stdout, stderr } = self.command(args).output().expect("fnhost runs");
        Run {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            success: status.success(),
        }
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let run = self.run(args);
        assert!(run.success, "fnhost {:?} failed:\n{}\n{}", os_args(args), run.stdout, run.stderr);
        run.stdout
    }

    /// Runs and insists on failure; returns stderr.
    pub fn fails<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let run = self.run(args);
        assert!(!run.success, "fnhost {:?} should have failed:\n{}\n{}", os_args(args), run.stdout, run.stderr);
        run.stderr
    }

    /// Starts a long-running command with piped output.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("fnhost starts")
    }

    pub fn produce(&self, topic: &str, messages: &[&str]) {
        let mut args = vec!["topics", "produce", topic];
        for message in messages {
            args.extend(["-m", message]);
        }
        self.ok(&args);
    }

    /// Every value in `topic`, in order.
    pub fn consume(&self, topic: &str) -> Vec<String> {
        self.ok(&["topics", "consume", topic, "--until-idle"]).lines().map(str::to_owned).collect()
    }

    /// Runs a function over `input` until it is drained; returns stdout.
    pub fn localrun(&self, wasm: &str, name: &str, input: &str, extra: &[&str]) -> String {
        let wasm = guest(wasm);
        let mut args: Vec<&str> = vec!["localrun", "--wasm", wasm.to_str().unwrap(), "--name", name, "--inputs", input];
        args.extend(extra);
        args.push("--until-idle");
        self.ok(&args)
    }
}

fn os_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<String> {
    args.iter().map(|arg| arg.as_ref().to_string_lossy().into_owned()).collect()
}

/// The counter value `querystate` prints for a key.
pub fn number_value(fnhost: &Fnhost, fqfn: &str, key: &str) -> i64 {
    let json: serde_json::Value =
        serde_json::from_str(&fnhost.ok(&["functions", "querystate", "--fqfn", fqfn, "--key", key])).unwrap();
    json["numberValue"].as_i64().unwrap_or_else(|| panic!("{key} is not a counter: {json}"))
}

impl Fnhost {
    /// Appends `(key, value)` messages through the library, as a producer with keys would.
    pub fn produce_keyed(&self, topic: &str, messages: &[(String, String)]) {
        use fnhost::engine::broker::{Broker, OutMessage};
        let store = fnhost::embedded::EmbeddedStore::open(&self.data_dir().join("db")).unwrap();
        let messages = messages
            .iter()
            .map(|(key, value)| OutMessage { key: Some(key.clone()), ..OutMessage::new(value.as_bytes()) })
            .collect();
        store.produce(&fnhost::names::TopicName::parse(topic).unwrap(), messages).unwrap();
    }

    /// Runs `fnhost ARGS` with debug logs and kills it with SIGKILL once it has committed
    /// `commits` batches: no handler runs and nothing is flushed, and the next batch is in flight.
    pub fn kill_after_commits(&self, args: &[&str], commits: usize) {
        use std::io::{BufRead, BufReader};
        let mut command = self.command(args);
        command.env("FNHOST_LOG", "fnhost=debug").stdout(Stdio::null());
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let seen = stderr.lines().map_while(Result::ok).filter(|line| line.contains("committed a batch")).take(commits);
        assert_eq!(seen.count(), commits, "the run ended before committing {commits} batches");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Every message in `topic`, in order, as `topics consume --json` prints it.
    pub fn consume_json(&self, topic: &str) -> Vec<serde_json::Value> {
        let stdout = self.ok(&["topics", "consume", topic, "--until-idle", "--json"]);
        stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

/// A `fnhost worker` process on a loopback port of its own, with its own data directory.
pub struct Worker {
    child: Child,
    pub url: String,
    /// What the worker logged, for failure messages.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Worker {
    /// Starts a worker on `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Starts a worker on `data_dir` with more flags and waits until it listens.
    pub fn start_with(data_dir: &Path, flags: &[&str]) -> Self {
        Self::start_with_env(data_dir, flags, &[])
    }

    /// [`Worker::start_with`] with environment variables set for the worker.
    pub fn start_with_env(data_dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        // Any free port on loopback, unless the flags say where.
        let listen: &[&str] = if flags.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
        let mut child = fnhost_command()
            .envs(env.iter().copied())
            .arg("worker")
            .args(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fnhost worker starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_sender, address) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            // Reads to the end, so the worker never blocks on a full pipe.
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, url)) = line.split_once("listening on ") {
                    let _ = address_sender.send(url.trim().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let url = address.recv_timeout(std::time::Duration::from_secs(120)).unwrap_or_else(|_| {
            panic!("the worker did not start:\n{}", log.lock().unwrap().join("\n"));
        });
        Self { child, url, log }
    }

    /// Starts a worker in `dir/data` whose access file (`dir/access.yaml`) has [`OPERATOR`]'s
    /// token and tenants `acme` ([`ACME`]) and `globex` ([`GLOBEX`]) with the default quotas.
    pub fn start_with_tenants(dir: &Path) -> Self {
        let access = dir.join("access.yaml");
        let text = format!(
            "operatorTokens: [{OPERATOR}]\ntenants:\n  acme:\n    tokens: [{ACME}]\n  globex:\n    tokens: [{GLOBEX}]\n"
        );
        std::fs::write(&access, text).unwrap();
        Self::start_with(&dir.join("data"), &["--access", access.to_str().unwrap()])
    }

    /// Everything the worker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Runs `fnhost ARGS --url URL`.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_as(None, args)
    }

    /// Runs `fnhost ARGS --url URL` presenting `token` (FNHOST_TOKEN), if given.
    pub fn cli_as(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut command = fnhost_command();
        command.args(args).args(["--url", &self.url]);
        if let Some(token) = token {
            command.env("FNHOST_TOKEN", token);
        }
        let Output { status, stdout, stderr } = command.output().expect("fnhost runs");
        Run {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            success: status.success(),
        }
    }

    /// Runs a CLI command that must succeed and returns the JSON it printed.
    pub fn ok(&self, args: &[&str]) -> serde_json::Value {
        let run = self.cli(args);
        assert!(run.success, "fnhost {args:?} failed:\n{}\n{}\nworker log:\n{}", run.stdout, run.stderr, self.log());
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|error| panic!("{args:?} printed no JSON ({error}):\n{}", run.stdout))
    }

    /// Runs a CLI command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.cli(args);
        assert!(!run.success, "fnhost {args:?} should have failed:\n{}", run.stdout);
        run.stderr
    }

    /// Sends an HTTP request; returns the status and the body (as JSON if it is JSON).
    pub fn http(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> (u16, serde_json::Value) {
        self.http_as(None, method, path, body)
    }

    /// [`Worker::http`] with `Authorization: Bearer TOKEN`, if a token is given.
    pub fn http_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, serde_json::Value) {
        fn authorize<B>(request: ureq::RequestBuilder<B>, token: Option<&str>) -> ureq::RequestBuilder<B> {
            let request = request.header("x-fnhost-client", "fnhost-tests");
            match token {
                Some(token) => request.header("Authorization", format!("Bearer {token}")),
                None => request,
            }
        }
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}{path}", self.url);
        let response = match (method, body) {
            ("GET", _) => authorize(agent.get(&url), token).call(),
            ("DELETE", _) => authorize(agent.delete(&url), token).call(),
            ("POST", Some((content_type, bytes))) => {
                authorize(agent.post(&url), token).header("Content-Type", content_type).send(&bytes[..])
            }
            ("POST", None) => authorize(agent.post(&url), token).send_empty(),
            ("PUT", Some((content_type, bytes))) => {
                authorize(agent.put(&url), token).header("Content-Type", content_type).send(&bytes[..])
            }
            ("PUT", None) => authorize(agent.put(&url), token).send_empty(),
            ("PATCH", _) => authorize(agent.patch(&url), token).send_empty(),
            (other, _) => panic!("the tests do not send {other}"),
        };
        let mut response = response.expect("the worker answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Polls `check` until it holds, failing with `what` after five minutes: far beyond what any
    /// test waits for, so that only a hang fails, not a busy machine.
    pub fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; worker log:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The first `count` messages of `topic`, read through subscription `reader` as their
    /// commits land: a message counts as processed in stats before its batch commits, so one
    /// read may come early.
    pub fn read(&self, topic: &str, count: usize) -> Vec<String> {
        self.read_as(None, topic, count)
    }

    /// [`Worker::read`] with a token.
    pub fn read_as(&self, token: Option<&str>, topic: &str, count: usize) -> Vec<String> {
        let mut read = Vec::new();
        self.wait_for(&format!("{count} messages on {topic}"), || {
            let run = self.cli_as(token, &["topics", "consume", topic, "-s", "reader", "--until-idle"]);
            assert!(run.success, "{}", run.stderr);
            read.extend(run.stdout.lines().map(str::to_owned));
            read.len() >= count
        });
        read
    }

    /// Kills the worker with SIGKILL and waits for it to be gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops the worker with SIGTERM and returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().success()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
