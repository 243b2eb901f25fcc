//! pulsar-admin's topic and namespace verbs (`fnhost topics list|create|…`, `fnhost namespaces
//! …`), against a worker's REST API on Pulsar's v2 paths. Every command prints the worker's
//! answer (JSON, or one name a line for lists); a refusal is the worker's reason and a non-zero exit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};

use super::client::{AdminOptions, Body, Client, encode_segment, topic_segments};
use crate::limits::MAX_PEEK_MESSAGES;
use crate::names::{TopicName, check_namespace};
use crate::worker::api::topics::{BacklogQuotaBody, ResetCursorRequest, RetentionPolicies};

#[derive(Debug, Subcommand)]
pub(super) enum TopicAdminCommand {
    /// List the topics of a namespace (TENANT/NAMESPACE).
    List(NamespaceArgs),
    /// Create a topic without messages.
    Create(TopicArgs),
    /// Delete a topic, its messages and its subscriptions.
    Delete(DeleteArgs),
    /// Print a topic's stats (Pulsar's TopicStats).
    Stats(TopicArgs),
    /// List a topic's subscriptions.
    Subscriptions(TopicArgs),
    /// Delete a subscription of a topic; refused while it has consumers.
    Unsubscribe(SubscriptionArgs),
    /// Move a subscription's cursor back or forward: to a time, or to a message.
    ResetCursor(ResetCursorArgs),
    /// Acknowledge the next N messages of a subscription.
    Skip(SkipArgs),
    /// Acknowledge every message of a subscription.
    ClearBacklog(SubscriptionArgs),
    /// Print the next N messages a subscription has not acknowledged, without consuming them.
    PeekMessages(PeekArgs),
    /// Print one message, counted from the earliest or the latest of the topic.
    ExamineMessage(ExamineArgs),
}

#[derive(Debug, Subcommand)]
pub(super) enum NamespacesCommand {
    /// Print a namespace's policies (retention, message TTL, backlog quota).
    Policies(NamespaceArgs),
    /// Print a namespace's retention.
    GetRetention(NamespaceArgs),
    /// Keep acknowledged messages for a time and up to a size (-1: no limit; 0 and 0: keep none).
    SetRetention(SetRetentionArgs),
    /// Acknowledge, for every subscription, messages older than the TTL.
    SetMessageTtl(SetMessageTtlArgs),
    /// Stop expiring messages by age.
    RemoveMessageTtl(NamespaceArgs),
    /// Bound each topic's backlog, and say what happens to producers past it.
    SetBacklogQuota(SetBacklogQuotaArgs),
    /// Remove the backlog quota.
    RemoveBacklogQuota(NamespaceArgs),
}

#[derive(Debug, Args)]
pub(super) struct Worker {
    /// The worker's REST API [default: http://127.0.0.1:6750].
    #[arg(long)]
    url: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct NamespaceArgs {
    /// TENANT/NAMESPACE.
    namespace: String,
    #[command(flatten)]
    worker: Worker,
}

#[derive(Debug, Args)]
pub(super) struct TopicArgs {
    /// The topic (a short name means persistent://public/default/NAME).
    topic: String,
    #[command(flatten)]
    worker: Worker,
}

#[derive(Debug, Args)]
pub(super) struct DeleteArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// Delete it even though it has subscriptions (never while consumers are attached).
    #[arg(short = 'f', long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(super) struct SubscriptionArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// The subscription, in the topic's namespace.
    #[arg(short = 's', long)]
    subscription: String,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "target")]
pub(super) struct ResetTarget {
    /// How far back: minutes, or a number with s, m, h, d or w (10m, 3h, 2d).
    #[arg(short = 't', long, group = "target")]
    time: Option<String>,
    /// The message to deliver again from, as `consume --json` shows its id.
    #[arg(short = 'm', long = "message-id", visible_alias = "messageId", group = "target")]
    message_id: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ResetCursorArgs {
    #[command(flatten)]
    subscription: SubscriptionArgs,
    #[command(flatten)]
    target: ResetTarget,
}

#[derive(Debug, Args)]
pub(super) struct SkipArgs {
    #[command(flatten)]
    subscription: SubscriptionArgs,
    /// How many messages.
    #[arg(short = 'n', long = "count")]
    count: u64,
}

#[derive(Debug, Args)]
pub(super) struct PeekArgs {
    #[command(flatten)]
    subscription: SubscriptionArgs,
    /// How many messages.
    #[arg(short = 'n', long = "count", default_value_t = 1)]
    count: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InitialPosition {
    Earliest,
    Latest,
}

#[derive(Debug, Args)]
pub(super) struct ExamineArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// Count from the earliest message kept, or from the latest.
    #[arg(
        short = 'i',
        long = "initialPosition",
        visible_alias = "initial-position",
        value_enum,
        default_value = "latest"
    )]
    initial_position: InitialPosition,
    /// Which message, from 1.
    #[arg(short = 'm', long = "messagePosition", visible_alias = "message-position", default_value_t = 1)]
    message_position: u64,
}

#[derive(Debug, Args)]
pub(super) struct SetRetentionArgs {
    #[command(flatten)]
    namespace: NamespaceArgs,
    /// How long: -1 (no limit), 0, minutes, or a number with s, m, h, d or w.
    #[arg(short = 't', long, allow_hyphen_values = true)]
    time: String,
    /// How much: -1 (no limit), 0, bytes, or a number with K, M, G or T.
    #[arg(short = 's', long, allow_hyphen_values = true)]
    size: String,
}

#[derive(Debug, Args)]
pub(super) struct SetMessageTtlArgs {
    #[command(flatten)]
    namespace: NamespaceArgs,
    /// The TTL in seconds (0: none).
    #[arg(long = "messageTTL", visible_alias = "ttl")]
    ttl: u64,
}

#[derive(Debug, Args)]
pub(super) struct SetBacklogQuotaArgs {
    #[command(flatten)]
    namespace: NamespaceArgs,
    /// Bytes, or a number with K, M, G or T.
    #[arg(short = 'l', long)]
    limit: String,
    /// producer_request_hold, producer_exception or consumer_backlog_eviction.
    #[arg(short = 'p', long)]
    policy: String,
}

fn client(admin: &AdminOptions, worker: &Worker) -> anyhow::Result<Client> {
    admin.client(worker.url.as_deref())
}

/// `tenant/namespace`, checked.
fn namespace_path(given: &str) -> anyhow::Result<String> {
    let Some((tenant, namespace)) = given.split_once('/') else {
        bail!("`{given}` is not a namespace: give TENANT/NAMESPACE, as public/default")
    };
    check_namespace(tenant, namespace)?;
    Ok(format!("{}/{}", encode_segment(tenant), encode_segment(namespace)))
}

fn topic_path(given: &str) -> anyhow::Result<String> {
    Ok(format!("/admin/v2/persistent/{}", topic_segments(&TopicName::parse(given)?)))
}

fn subscription_path(args: &SubscriptionArgs) -> anyhow::Result<String> {
    Ok(format!("{}/subscription/{}", topic_path(&args.topic.topic)?, encode_segment(&args.subscription)))
}

/// A duration as pulsar-admin writes it: a bare number is minutes, or a number with s, m, h, d or w.
pub(super) fn parse_duration(given: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow!("`{given}` is not a duration: give minutes, or a number with s, m, h, d or w (10m, 3h, 2d)");
    let (number, unit) = split_unit(given, "m").ok_or_else(bad)?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(number.checked_mul(seconds).ok_or_else(bad)?))
}

/// `given` split into its leading number and the unit after it (`default_unit` when there is none).
fn split_unit<'a>(given: &'a str, default_unit: &'a str) -> Option<(u64, &'a str)> {
    let (number, unit) = match given.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => given.split_at(at),
        None => (given, default_unit),
    };
    Some((number.parse().ok()?, unit))
}

/// A size as pulsar-admin writes it: bytes, or a number with K, M, G or T (powers of 1024).
pub(super) fn parse_size(given: &str) -> anyhow::Result<u64> {
    let bad = || anyhow!("`{given}` is not a size: give bytes, or a number with K, M, G or T (500M, 1G)");
    let (number, unit) = split_unit(given, "").ok_or_else(bad)?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(bad)
}

fn print(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_lines(value: &serde_json::Value) {
    for name in value.as_array().into_iter().flatten() {
        println!("{}", name.as_str().unwrap_or_default());
    }
}

/// Runs a topic verb.
pub(super) fn run_topics(command: TopicAdminCommand, admin: &AdminOptions) -> anyhow::Result<()> {
    match command {
        TopicAdminCommand::List(args) => {
            let path = format!("/admin/v2/persistent/{}", namespace_path(&args.namespace)?);
            print_lines(&client(admin, &args.worker)?.send("GET", &path, Body::Empty)?);
        }
        TopicAdminCommand::Create(args) => {
            client(admin, &args.worker)?.send("PUT", &topic_path(&args.topic)?, Body::Empty)?;
            println!("created {}", TopicName::parse(&args.topic)?);
        }
        TopicAdminCommand::Delete(args) => {
            let path = format!("{}?force={}", topic_path(&args.topic.topic)?, args.force);
            client(admin, &args.topic.worker)?.send("DELETE", &path, Body::Empty)?;
            println!("deleted {}", TopicName::parse(&args.topic.topic)?);
        }
        TopicAdminCommand::Stats(args) => {
            print(&client(admin, &args.worker)?.send(
                "GET",
                &format!("{}/stats", topic_path(&args.topic)?),
                Body::Empty,
            )?)?;
        }
        TopicAdminCommand::Subscriptions(args) => {
            let path = format!("{}/subscriptions", topic_path(&args.topic)?);
            print_lines(&client(admin, &args.worker)?.send("GET", &path, Body::Empty)?);
        }
        TopicAdminCommand::Unsubscribe(args) => {
            client(admin, &args.topic.worker)?.send("DELETE", &subscription_path(&args)?, Body::Empty)?;
            println!("unsubscribed {} from {}", args.subscription, args.topic.topic);
        }
        TopicAdminCommand::ResetCursor(args) => {
            let base = subscription_path(&args.subscription)?;
            let client = client(admin, &args.subscription.topic.worker)?;
            match (&args.target.time, &args.target.message_id) {
                (Some(time), _) => {
                    let back = parse_duration(time)?;
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?;
                    let at = now.saturating_sub(back).as_millis();
                    client.send("POST", &format!("{base}/resetcursor/{at}"), Body::Empty)?;
                }
                (None, Some(message_id)) => {
                    let request = ResetCursorRequest { message_id: message_id.clone() };
                    client.send("POST", &format!("{base}/resetcursor"), Body::json(&request))?;
                }
                (None, None) => unreachable!("clap requires --time or --message-id"),
            }
            println!("reset the cursor of {}", args.subscription.subscription);
        }
        TopicAdminCommand::Skip(args) => {
            let path = format!("{}/skip/{}", subscription_path(&args.subscription)?, args.count);
            client(admin, &args.subscription.topic.worker)?.send("POST", &path, Body::Empty)?;
            println!("skipped {} messages of {}", args.count, args.subscription.subscription);
        }
        TopicAdminCommand::ClearBacklog(args) => {
            let path = format!("{}/skip_all", subscription_path(&args)?);
            client(admin, &args.topic.worker)?.send("POST", &path, Body::Empty)?;
            println!("cleared the backlog of {}", args.subscription);
        }
        TopicAdminCommand::PeekMessages(args) => {
            if args.count == 0 || args.count > MAX_PEEK_MESSAGES {
                bail!("-n {} is out of range: give 1 to {MAX_PEEK_MESSAGES} (MAX_PEEK_MESSAGES)", args.count);
            }
            let base = subscription_path(&args.subscription)?;
            let client = client(admin, &args.subscription.topic.worker)?;
            for position in 1..=args.count {
                match client.send("GET", &format!("{base}/position/{position}"), Body::Empty) {
                    Ok(message) => println!("{}", serde_json::to_string(&message)?),
                    // Fewer messages than asked: the ones there are printed.
                    Err(error) if error.is_not_found() && position > 1 => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        TopicAdminCommand::ExamineMessage(args) => {
            let position = match args.initial_position {
                InitialPosition::Earliest => "earliest",
                InitialPosition::Latest => "latest",
            };
            let path = format!(
                "{}/examinemessage?initialPosition={position}&messagePosition={}",
                topic_path(&args.topic.topic)?,
                args.message_position
            );
            print(&client(admin, &args.topic.worker)?.send("GET", &path, Body::Empty)?)?;
        }
    }
    Ok(())
}

/// Runs a namespace verb.
pub(super) fn run_namespaces(command: NamespacesCommand, admin: &AdminOptions) -> anyhow::Result<()> {
    let base =
        |args: &NamespaceArgs| namespace_path(&args.namespace).map(|path| format!("/admin/v2/namespaces/{path}"));
    match command {
        NamespacesCommand::Policies(args) => {
            print(&client(admin, &args.worker)?.send("GET", &base(&args)?, Body::Empty)?)?;
        }
        NamespacesCommand::GetRetention(args) => {
            print(&client(admin, &args.worker)?.send("GET", &format!("{}/retention", base(&args)?), Body::Empty)?)?;
        }
        NamespacesCommand::SetRetention(args) => {
            let minutes = match args.time.as_str() {
                "-1" => -1,
                time => i64::try_from(parse_duration(time)?.as_secs().div_ceil(60))?,
            };
            let megabytes = match args.size.as_str() {
                "-1" => -1,
                size => i64::try_from(parse_size(size)?.div_ceil(1 << 20))?,
            };
            let body = RetentionPolicies { retention_time_in_minutes: minutes, retention_size_in_mb: megabytes };
            let path = format!("{}/retention", base(&args.namespace)?);
            client(admin, &args.namespace.worker)?.send("POST", &path, Body::json(&body))?;
            println!("set the retention of {}", args.namespace.namespace);
        }
        NamespacesCommand::SetMessageTtl(args) => {
            let path = format!("{}/messageTTL", base(&args.namespace)?);
            client(admin, &args.namespace.worker)?.send("POST", &path, Body::json(&args.ttl))?;
            println!("set the message TTL of {} to {} s", args.namespace.namespace, args.ttl);
        }
        NamespacesCommand::RemoveMessageTtl(args) => {
            client(admin, &args.worker)?.send("DELETE", &format!("{}/messageTTL", base(&args)?), Body::Empty)?;
            println!("removed the message TTL of {}", args.namespace);
        }
        NamespacesCommand::SetBacklogQuota(args) => {
            let body = BacklogQuotaBody {
                limit_size: i64::try_from(parse_size(&args.limit)?)?,
                limit_time: -1,
                policy: args.policy.clone(),
            };
            body.quota().map_err(|reason| anyhow!(reason))?;
            let path = format!("{}/backlogQuota", base(&args.namespace)?);
            client(admin, &args.namespace.worker)?.send("POST", &path, Body::json(&body))?;
            println!("set the backlog quota of {}", args.namespace.namespace);
        }
        NamespacesCommand::RemoveBacklogQuota(args) => {
            client(admin, &args.worker)?.send("DELETE", &format!("{}/backlogQuota", base(&args)?), Body::Empty)?;
            println!("removed the backlog quota of {}", args.namespace);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_pulsar_admin_writes_them() {
        for (given, seconds) in
            [("10", 600), ("30s", 30), ("10m", 600), ("3h", 10_800), ("2d", 172_800), ("1w", 604_800)]
        {
            assert_eq!(parse_duration(given).unwrap(), Duration::from_secs(seconds), "{given}");
        }
        for given in ["", "m", "10x", "-5m", "99999999999999999999w"] {
            assert!(parse_duration(given).is_err(), "{given} is refused");
        }
        for (given, bytes) in [("100", 100), ("1K", 1024), ("500M", 500 << 20), ("1G", 1 << 30), ("2t", 2 << 40)] {
            assert_eq!(parse_size(given).unwrap(), bytes, "{given}");
        }
        for given in ["", "G", "1Q", "-1", "99999999999T"] {
            assert!(parse_size(given).is_err(), "{given} is refused");
        }
    }
}
