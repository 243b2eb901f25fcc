//! `fnhost worker`: its flags, and its start-up: the engine (the data directory, or NATS in a
//! cluster), access, TLS, and the admin API served until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::{COMPILED_DIR, DataDir, cache_dir, nats_flags, open_store};
use crate::limits::{DEFAULT_WORKER_INSTANCES, MAX_WORKER_INSTANCES, MIN_FREE_DISK_BYTES};
use crate::nats::NatsEngine;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::worker::access::Access;
use crate::worker::cluster::ClusterConfig;
use crate::worker::disk_guard::DiskGuard;
use crate::worker::produce_batch::{DEFAULT_BATCH_MAX_DELAY_MS, MAX_BATCH_MAX_DELAY_MS};
use crate::worker::{Worker, WorkerConfig, admin};

#[derive(Debug, Args)]
pub(super) struct WorkerArgs {
    /// The address the REST API listens on (port 0: any free port, shown in the log).
    #[arg(long, default_value = "127.0.0.1:6750")]
    listen: std::net::SocketAddr,
    /// Most instances across all functions: each is a thread and a pooled sandbox.
    #[arg(long, default_value_t = DEFAULT_WORKER_INSTANCES)]
    max_instances: u32,
    #[command(flatten)]
    data: DataDir,
    /// Join a cluster on these NATS JetStream servers (nats://HOST:PORT, comma-separated) instead
    /// of keeping everything in the data directory, which then holds only compiled components.
    #[arg(long, value_name = "URLS")]
    cluster: Option<String>,
    #[command(flatten)]
    nats: nats_flags::NatsFlags,
    /// How many copies of each stream and bucket NATS keeps (default: one per server given, at most 3).
    #[arg(long, requires = "cluster")]
    replicas: Option<usize>,
    /// This worker's name in the cluster (default: HOSTNAME-PORT).
    #[arg(long, requires = "cluster")]
    worker_id: Option<String>,
    /// The admin URL other workers reach this one at (default: http:// or, with --tls-cert,
    /// https:// and the listen address).
    #[arg(long, requires = "cluster")]
    advertised_url: Option<String>,
    /// How long a REST producer's messages wait for other requests' to the same topic, to be
    /// appended with them as one batch (Pulsar's batchingMaxPublishDelay; 0: each request alone).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_BATCH_MAX_DELAY_MS)]
    batch_max_delay_ms: u64,
    /// Serve the admin API over HTTPS with this PEM certificate chain (the worker's first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The PEM certificate of the authority that signed the other workers' certificates: a peer
    /// whose certificate it did not sign is refused.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    tls_ca: Option<PathBuf>,
    /// Free space to keep in the data directory's file system: below it, writes are refused (507)
    /// and instances fetch nothing until space is freed. Not used with --cluster.
    #[arg(long, value_name = "BYTES", default_value_t = MIN_FREE_DISK_BYTES)]
    min_free_disk_bytes: u64,
    /// The access file (YAML or JSON): operator and tenant tokens, topic grants and tenant quotas
    /// (docs/SECURITY.md). Without tokens the worker listens only on loopback.
    #[arg(long, value_name = "FILE")]
    access: Option<PathBuf>,
}

pub(super) fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    if args.max_instances == 0 || args.max_instances > MAX_WORKER_INSTANCES {
        bail!(
            "--max-instances {} is out of range: give 1 to {MAX_WORKER_INSTANCES} (MAX_WORKER_INSTANCES)",
            args.max_instances
        );
    }
    if args.batch_max_delay_ms > MAX_BATCH_MAX_DELAY_MS {
        bail!(
            "--batch-max-delay-ms {} is out of range: give 0 to {MAX_BATCH_MAX_DELAY_MS} (MAX_BATCH_MAX_DELAY_MS)",
            args.batch_max_delay_ms
        );
    }
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir().join(COMPILED_DIR)),
        // Each running instance holds one slot; a trapped instance frees its slot before its
        // replacement takes one, and an update stops the old instances before starting new ones.
        max_instances: args.max_instances,
    })?;
    let access = match &args.access {
        Some(path) => Access::load(path, args.max_instances)?,
        None => Access::default(),
    };
    if !access.enforced() {
        if !args.listen.ip().is_loopback() {
            bail!(
                "--listen {} is not a loopback address, and no tokens are configured: anyone who reached it could run code on this machine. Give --access FILE with tokens (docs/SECURITY.md), or listen on 127.0.0.1",
                args.listen
            );
        }
        tracing::warn!(
            "no tokens are configured (--access): the admin API accepts every request, so it listens only on loopback"
        );
    } else if args.cluster.is_some() && access.worker_token().is_none() {
        bail!(
            "in a cluster, an access file with tokens must give workerToken, the operator token workers present to each other"
        );
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fnhost-http")
        .build()
        .context("cannot start the HTTP runtime")?;
    let listener = tokio
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("cannot listen on {}: is another worker running there? pass --listen", args.listen))?;
    let address = listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(certificate), Some(key)) => Some(crate::worker::tls::server_config(certificate, key)?),
        _ => None,
    };
    if args.cluster.is_some() && tls.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "--listen {} is not a loopback address and the admin API is plain HTTP: tokens, function code and state cross the network readable, between workers too. Give --tls-cert and --tls-key, and --tls-ca to every worker",
            args.listen
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let authority =
        args.tls_ca.as_deref().map(|path| crate::worker::tls::TrustedAuthority::load("--tls-ca", path)).transpose()?;
    let (store, cluster): (Arc<dyn crate::engine::Engine>, _) = match &args.cluster {
        None => (Arc::new(open_store(&args.data)?), None),
        Some(urls) => {
            let replicas = args.replicas.unwrap_or_else(|| urls.split(',').count().min(3));
            if !(1..=5).contains(&replicas) {
                bail!("--replicas {replicas} is out of range: NATS keeps 1 to 5 copies");
            }
            let engine = NatsEngine::connect(urls, replicas, &args.nats.security())?;
            let host = std::fs::read_to_string("/etc/hostname")
                .map_or_else(|_| "worker".into(), |name| name.trim().to_owned());
            let config = ClusterConfig {
                membership: Arc::new(engine.clone()),
                worker_id: args.worker_id.clone().unwrap_or_else(|| format!("{host}-{}", address.port())),
                url: args.advertised_url.clone().unwrap_or_else(|| format!("{scheme}://{address}")),
                token: access.worker_token().map(str::to_owned),
                authority,
            };
            (Arc::new(engine), Some(config))
        }
    };
    let disk_guard = match cluster {
        None => Some(DiskGuard::new(args.data.data_dir.clone(), args.min_free_disk_bytes)),
        Some(_) => None,
    };
    let config = WorkerConfig {
        cache_dir: cache_dir(),
        max_instances: args.max_instances,
        cluster,
        access,
        disk_guard,
        batch_max_delay: Duration::from_millis(args.batch_max_delay_ms),
    };
    let worker = Arc::new(Worker::open(config, store, runtime)?);
    worker.run_cluster()?;
    tokio.block_on(async {
        tracing::info!("fnhost worker listening on {scheme}://{address}");
        admin::serve(listener, tls, worker.clone(), shutdown_signal()).await.context("the HTTP server failed")?;
        tracing::info!("stopping: every instance finishes and commits its batch");
        let stopping = worker.clone();
        tokio::task::spawn_blocking(move || stopping.shutdown()).await.context("shutdown failed")?;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!("cannot watch for SIGTERM: {error}");
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
