//! `fnhost functions ...`: pulsar-admin's function verbs, against a worker's REST API.
//!
//! Every command prints the worker's JSON answer; a refusal is one line with the worker's reason
//! and a non-zero exit.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::client::{AdminOptions, Body, Client, encode_segment};
use super::history::{self, RedriveArgs, ReplayArgs};
use super::{DATABASE_DIR, FunctionFlags, NO_CODE};
use crate::embedded::EmbeddedStore;
use crate::engine::state::{KeyPage, StateStore};
use crate::limits::{MAX_PACKAGE_SIZE, MAX_STATE_KEYS_LISTED};
use crate::names::{DEFAULT_NAMESPACE, DEFAULT_TENANT, Fqfn};
use crate::spec::FunctionSpec;
use crate::worker::api::{FunctionState, LogLine, LogLines, StateKeys};

/// How often `querystate --watch` asks again.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Subcommand)]
pub(super) enum FunctionsCommand {
    /// Create a function on the worker and start its instances.
    Create(CreateArgs),
    /// Change a function's config (the flags given) and, with --wasm, its code.
    Update(CreateArgs),
    /// Stop a function and delete it, its state and its subscription.
    Delete(NameArgs),
    /// Print a function's config.
    Get(NameArgs),
    /// List the functions of a namespace.
    List(ListArgs),
    /// Print a function's status (or one instance's).
    Status(InstanceArgs),
    /// Print a function's stats (or one instance's).
    Stats(InstanceArgs),
    /// Start a function's instances (or one).
    Start(InstanceArgs),
    /// Stop a function's instances (or one) after their current batch.
    Stop(InstanceArgs),
    /// Restart a function's instances (or one).
    Restart(InstanceArgs),
    /// Put a value on an input topic and print the function's output for it.
    Trigger(TriggerArgs),
    /// Print a state value as Pulsar's FunctionState JSON.
    Querystate(QuerystateArgs),
    /// Print the function's recent log lines from the worker, and with -f new ones as they come.
    Logs(LogsArgs),
    /// Set a state value from FunctionState JSON (counters are refused).
    Putstate(PutstateArgs),
    /// Run a message (or a range) through the function again, on its state as it was just before,
    /// and print what it would do, committing nothing.
    Replay(ReplayArgs),
    /// Send the function's dead letters back through it (after an update that fixed it), in
    /// order, each removed from the dead-letter topic in the commit that processes it.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub(super) struct WorkerUrl {
    /// The worker's REST API [default: http://127.0.0.1:6750].
    #[arg(long)]
    url: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct Naming {
    /// The function as tenant/namespace/name.
    #[arg(long, conflicts_with_all = ["tenant", "namespace", "name"])]
    fqfn: Option<String>,
    /// The tenant [default: public].
    #[arg(long)]
    tenant: Option<String>,
    /// The namespace [default: default].
    #[arg(long)]
    namespace: Option<String>,
    /// The function name.
    #[arg(long)]
    name: Option<String>,
}

impl WorkerUrl {
    /// A client of this worker, with pulsar-admin's global options.
    pub(super) fn client(&self, admin: &AdminOptions) -> anyhow::Result<Client> {
        admin.client(self.url.as_deref())
    }
}

impl Naming {
    pub(super) fn fqfn(&self) -> anyhow::Result<Fqfn> {
        match (&self.fqfn, &self.name) {
            (Some(fqfn), _) => Ok(Fqfn::parse(fqfn)?),
            (None, Some(name)) => Ok(Fqfn::new(
                self.tenant.as_deref().unwrap_or(DEFAULT_TENANT),
                self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
                name,
            )?),
            (None, None) => bail!("name the function with --fqfn tenant/namespace/name, or with --name"),
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    function: FunctionFlags,
}

#[derive(Debug, Args)]
pub(super) struct NameArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    naming: Naming,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    /// The tenant.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// The namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
}

#[derive(Debug, Args)]
pub(super) struct InstanceArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    naming: Naming,
    /// One instance only.
    #[arg(long)]
    instance_id: Option<u32>,
}

#[derive(Debug, Args)]
pub(super) struct TriggerArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    naming: Naming,
    /// The value to put on the input topic.
    #[arg(long, required_unless_present = "trigger_file", conflicts_with = "trigger_file")]
    trigger_value: Option<String>,
    /// A file whose content is the value.
    #[arg(long)]
    trigger_file: Option<PathBuf>,
    /// The input topic (needed when the function has several).
    #[arg(long)]
    topic: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct QuerystateArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    naming: Naming,
    /// The state key.
    #[arg(short = 'k', long, required_unless_present = "list", conflicts_with = "list")]
    key: Option<String>,
    /// List the function's state keys instead (a JSON array, in byte order, expired ones left out).
    #[arg(long, conflicts_with_all = ["watch", "as_of", "why"])]
    list: bool,
    /// With --list: only keys that start with this.
    #[arg(long, requires = "list")]
    prefix: Option<String>,
    /// With --list: at most this many keys [default: all].
    #[arg(long, requires = "list")]
    limit: Option<usize>,
    /// Keep watching: print the value again each time it changes.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Read the data directory of a stopped localrun instead of asking a worker.
    #[arg(long, conflicts_with_all = ["url", "watch", "as_of", "why"])]
    data_dir: Option<PathBuf>,
    /// The value as it was just before the function processed this message (an id), or at a
    /// time: 10m, 3h or 2d ago, or @ and milliseconds since the Unix epoch.
    #[arg(long, conflicts_with_all = ["watch", "why"])]
    as_of: Option<String>,
    /// The topic of --as-of's message (needed when the function has several inputs).
    #[arg(long, requires = "as_of")]
    topic: Option<String>,
    /// Say which message, instance, code and time wrote the current value.
    #[arg(long, conflicts_with = "watch")]
    why: bool,
}

#[derive(Debug, Args)]
pub(super) struct LogsArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    naming: Naming,
    /// Keep printing lines as the function writes them, until interrupted.
    #[arg(short = 'f', long)]
    follow: bool,
    /// One instance's lines only.
    #[arg(long)]
    instance_id: Option<u32>,
    /// How many of the lines the worker keeps to print first (at most 1,000).
    #[arg(long, default_value_t = 100)]
    tail: usize,
}

#[derive(Debug, Args)]
pub(super) struct PutstateArgs {
    #[command(flatten)]
    worker: WorkerUrl,
    #[command(flatten)]
    naming: Naming,
    /// FunctionState JSON: {"key": ..., "stringValue": ...} or {"key": ..., "byteValue": BASE64}.
    #[arg(short = 's', long)]
    state: String,
}

pub(super) fn function_path(fqfn: &Fqfn) -> String {
    format!(
        "/admin/v3/functions/{}/{}/{}",
        encode_segment(fqfn.tenant()),
        encode_segment(fqfn.namespace()),
        encode_segment(fqfn.name())
    )
}

fn instance_path(fqfn: &Fqfn, instance_id: Option<u32>, action: &str) -> String {
    match instance_id {
        Some(instance_id) => format!("{}/{instance_id}/{action}", function_path(fqfn)),
        None => format!("{}/{action}", function_path(fqfn)),
    }
}

fn print(json: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(json)?);
    Ok(())
}

/// The form of a create or update: the config, and the component read (or built) here and uploaded.
fn function_form(spec: FunctionSpec) -> anyhow::Result<Body> {
    let mut fields = Vec::new();
    if let Some(code) = spec.code()? {
        let path = super::progress::component_file(&code, spec.world())?;
        let shown = path.display();
        let size = std::fs::metadata(&path).with_context(|| format!("cannot read the component {shown}"))?.len();
        if size > MAX_PACKAGE_SIZE as u64 {
            bail!("the component {shown} is {size} bytes; the limit (MAX_PACKAGE_SIZE) is {MAX_PACKAGE_SIZE}");
        }
        fields.push(("data", std::fs::read(&path).with_context(|| format!("cannot read the component {shown}"))?));
    }
    let spec = spec.without_code();
    fields.push(("functionConfig", serde_json::to_vec(&spec)?));
    Ok(Body::Form(fields))
}

/// Sends a create or update, with a bar over the upload on a terminal.
fn upload(client: &Client, method: &str, path: &str, body: Body) -> anyhow::Result<serde_json::Value> {
    let size = match &body {
        Body::Form(fields) => fields.iter().map(|(_, value)| value.len() as u64).sum(),
        _ => 0,
    };
    let bar = super::progress::bytes(size, "uploading");
    let answer = client.send_reporting(method, path, body, &|sent| bar.set_position(sent));
    bar.finish_and_clear();
    Ok(answer?)
}

pub(super) fn run(command: FunctionsCommand, admin: &AdminOptions) -> anyhow::Result<()> {
    match command {
        FunctionsCommand::Create(args) => {
            let spec = args.function.into_spec()?;
            let fqfn = spec.fqfn()?;
            if spec.code()?.is_none() {
                bail!(NO_CODE);
            }
            let body = function_form(spec)?;
            print(&upload(&args.worker.client(admin)?, "POST", &function_path(&fqfn), body)?)
        }
        FunctionsCommand::Update(args) => {
            let spec = args.function.into_spec()?;
            let fqfn = spec.fqfn()?;
            let body = function_form(spec)?;
            print(&upload(&args.worker.client(admin)?, "PUT", &function_path(&fqfn), body)?)
        }
        FunctionsCommand::Delete(args) => {
            let path = function_path(&args.naming.fqfn()?);
            print(&args.worker.client(admin)?.send("DELETE", &path, Body::Empty)?)
        }
        FunctionsCommand::Get(args) => {
            let path = function_path(&args.naming.fqfn()?);
            print(&args.worker.client(admin)?.send("GET", &path, Body::Empty)?)
        }
        FunctionsCommand::List(args) => {
            let path =
                format!("/admin/v3/functions/{}/{}", encode_segment(&args.tenant), encode_segment(&args.namespace));
            print(&args.worker.client(admin)?.send("GET", &path, Body::Empty)?)
        }
        FunctionsCommand::Status(args) => instance_request(&args, admin, "GET", "status"),
        FunctionsCommand::Stats(args) => instance_request(&args, admin, "GET", "stats"),
        FunctionsCommand::Start(args) => instance_request(&args, admin, "POST", "start"),
        FunctionsCommand::Stop(args) => instance_request(&args, admin, "POST", "stop"),
        FunctionsCommand::Restart(args) => instance_request(&args, admin, "POST", "restart"),
        FunctionsCommand::Trigger(args) => {
            let value = match (&args.trigger_value, &args.trigger_file) {
                (Some(value), _) => value.clone().into_bytes(),
                (None, Some(file)) => {
                    std::fs::read(file).with_context(|| format!("cannot read the trigger file {}", file.display()))?
                }
                (None, None) => bail!("give --trigger-value or --trigger-file"),
            };
            let mut fields = vec![("data", value)];
            if let Some(topic) = &args.topic {
                fields.push(("topic", topic.clone().into_bytes()));
            }
            let path = format!("{}/trigger", function_path(&args.naming.fqfn()?));
            print(&args.worker.client(admin)?.send("POST", &path, Body::Form(fields))?)
        }
        FunctionsCommand::Querystate(args) => querystate(&args, admin),
        FunctionsCommand::Logs(args) => logs(&args, admin),
        FunctionsCommand::Replay(args) => history::replay(args, admin),
        FunctionsCommand::Redrive(args) => history::redrive(&args, admin),
        FunctionsCommand::Putstate(args) => {
            let state: FunctionState = serde_json::from_str(&args.state).map_err(|error| {
                anyhow::anyhow!(
                    "--state is not FunctionState JSON ({error}); give '{{\"key\": \"k\", \"stringValue\": \"v\"}}'"
                )
            })?;
            let Some(key) = &state.key else {
                bail!("--state has no \"key\"; give '{{\"key\": \"k\", \"stringValue\": \"v\"}}'");
            };
            let path = format!("{}/state/{}", function_path(&args.naming.fqfn()?), encode_segment(key));
            print(&args.worker.client(admin)?.send("POST", &path, Body::json(&state))?)
        }
    }
}

/// `functions logs`: the lines the worker keeps, then with `-f` each new one, as
/// `TIME LEVEL [instance N] line`.
fn logs(args: &LogsArgs, admin: &AdminOptions) -> anyhow::Result<()> {
    let client = args.worker.client(admin)?;
    let mut path = format!("{}/logs?tail={}", function_path(&args.naming.fqfn()?), args.tail);
    if let Some(instance_id) = args.instance_id {
        path.push_str(&format!("&instanceId={instance_id}"));
    }
    if !args.follow {
        let answer: LogLines = client.call("GET", &path, Body::Empty)?;
        answer.lines.iter().for_each(print_log_line);
        return Ok(());
    }
    path.push_str("&follow=true");
    client.follow_events(&path, |data| match serde_json::from_str::<LogLine>(data) {
        Ok(line) => print_log_line(&line),
        Err(error) => eprintln!("warning: a log event fnhost cannot read ({error}): {data}"),
    })?;
    Ok(())
}

fn print_log_line(line: &LogLine) {
    use std::io::Write as _;
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(line.time) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| line.time.to_string());
    let mut out = std::io::stdout().lock();
    // A follower's lines go out as they come, not when a buffer fills.
    let _ = writeln!(out, "{time} {} [instance {}] {}", line.level, line.instance_id, line.message);
    let _ = out.flush();
}

/// What reads one page of a function's state keys: its table, or a worker.
type PageReader = Box<dyn FnMut(&KeyPage) -> anyhow::Result<Vec<String>>>;

/// `querystate --list`: every key (or the first `--limit`), a page at a time.
fn list_state(args: &QuerystateArgs, admin: &AdminOptions, fqfn: &Fqfn) -> anyhow::Result<()> {
    let mut page_of: PageReader = match &args.data_dir {
        Some(data_dir) => {
            let table = EmbeddedStore::open(&data_dir.join(DATABASE_DIR))?.table(fqfn)?;
            Box::new(move |page| Ok(table.list(page)?))
        }
        None => {
            let client = args.worker.client(admin)?;
            let path = format!("{}/state", function_path(fqfn));
            Box::new(move |page| {
                let mut query = format!("prefix={}&limit={}", encode_segment(&page.prefix), page.limit);
                if let Some(after) = &page.after {
                    query.push_str(&format!("&after={}", encode_segment(after)));
                }
                Ok(client.call::<StateKeys>("GET", &format!("{path}?{query}"), Body::Empty)?.keys)
            })
        }
    };
    let wanted = args.limit.unwrap_or(usize::MAX);
    let mut keys: Vec<String> = Vec::new();
    let mut after = None;
    while keys.len() < wanted {
        let limit = (wanted - keys.len()).min(MAX_STATE_KEYS_LISTED);
        let listed = page_of(&KeyPage::new(args.prefix.clone().unwrap_or_default(), after, limit)?)?;
        let full = listed.len() == limit;
        after = listed.last().cloned();
        keys.extend(listed);
        if !full {
            break;
        }
    }
    print(&serde_json::to_value(keys)?)
}

fn instance_request(args: &InstanceArgs, admin: &AdminOptions, method: &str, action: &str) -> anyhow::Result<()> {
    let path = instance_path(&args.naming.fqfn()?, args.instance_id, action);
    print(&args.worker.client(admin)?.send(method, &path, Body::Empty)?)
}

fn querystate(args: &QuerystateArgs, admin: &AdminOptions) -> anyhow::Result<()> {
    let fqfn = args.naming.fqfn()?;
    let Some(key) = &args.key else { return list_state(args, admin, &fqfn) };
    if let Some(data_dir) = &args.data_dir {
        let store = EmbeddedStore::open(&data_dir.join(DATABASE_DIR))?;
        let Some(stored) = store.table(&fqfn)?.get(key)? else {
            bail!("function {fqfn} has no state under key `{key}`");
        };
        return print(&serde_json::to_value(FunctionState::of(key, stored))?);
    }
    let path = format!("{}/state/{}", function_path(&fqfn), encode_segment(key));
    if let Some(as_of) = &args.as_of {
        return history::query(
            &args.worker,
            admin,
            &format!("{path}?{}", history::as_of_query(as_of, args.topic.as_deref())?),
        );
    }
    if args.why {
        return history::query(&args.worker, admin, &format!("{path}?why=true"));
    }
    let client = args.worker.client(admin)?;
    if !args.watch {
        return print(&client.send("GET", &path, Body::Empty)?);
    }
    let mut last_version = None;
    loop {
        match client.call::<FunctionState>("GET", &path, Body::Empty) {
            Ok(state) => {
                if state.version != last_version {
                    print(&serde_json::to_value(&state)?)?;
                    last_version = state.version;
                }
            }
            // A key that does not exist yet is watched until it does.
            Err(error) if error.is_not_found() && last_version.is_none() => {}
            Err(error) => return Err(error.into()),
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}
