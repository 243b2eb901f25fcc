//! NATS JetStream servers on loopback for tests and the benchmark.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn nats_server() -> PathBuf {
    match std::env::var_os("FNHOST_NATS_SERVER") {
        Some(path) => path.into(),
        None if std::path::Path::new("/usr/sbin/nats-server").exists() => "/usr/sbin/nats-server".into(),
        None => "nats-server".into(),
    }
}

/// NATS JetStream servers on loopback, each with its own ports and store directory; a cluster if
/// there are several.
pub struct Nats {
    nodes: Vec<Option<Child>>,
    client_ports: Vec<u16>,
    monitor_ports: Vec<u16>,
    dir: tempfile::TempDir,
}

/// How many times a cluster is started again on fresh ports when one of its servers exits at
/// start: a port found free can be taken by another test's server before this one binds it.
const START_ATTEMPTS: usize = 5;

impl Nats {
    pub fn start(size: usize) -> Self {
        Self::start_with(size, "")
    }

    /// Starts `size` servers with `config` added to each one's configuration file: an
    /// `authorization`, `accounts` or `tls` block. The health checks use the monitoring port,
    /// which these blocks do not guard.
    pub fn start_with(size: usize, config: &str) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(size, config) {
                Ok(nats) => return nats,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("NATS did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n----\n"));
    }

    /// Starts the servers on ports free a moment ago; an error (with the server's log) if one exits.
    fn try_start(size: usize, extra: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports.iter().map(|port| format!("nats-route://127.0.0.1:{port}")).collect();
        let mut nodes = Vec::new();
        for index in 0..size {
            let store = dir.path().join(format!("n{index}"));
            let mut config = format!(
                "server_name: n{index}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n",
                client_ports[index],
                monitor_ports[index],
                store.to_str().unwrap()
            );
            config.push_str(extra);
            config.push('\n');
            if size > 1 {
                config.push_str(&format!(
                    "cluster {{ name: fnhost-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    route_ports[index],
                    routes.join(", ")
                ));
            }
            let file = dir.path().join(format!("n{index}.conf"));
            std::fs::write(&file, config).unwrap();
            let log = std::fs::File::create(dir.path().join(format!("n{index}.log"))).unwrap();
            let child = Command::new(nats_server())
                .arg("-c")
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server runs (apt-get install nats-server, or set FNHOST_NATS_SERVER)");
            nodes.push(Some(child));
        }
        let mut nats = Self { nodes, client_ports, monitor_ports, dir };
        for index in 0..size {
            nats.wait_healthy(index)?;
        }
        Ok(nats)
    }

    /// Waits until server `index` has JetStream up and, in a cluster, a meta leader; an error if
    /// it exits first.
    fn wait_healthy(&mut self, index: usize) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}/healthz", self.monitor_ports[index]);
        let deadline = Instant::now() + Duration::from_secs(120);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        loop {
            if let Some(status) = self.nodes[index].as_mut().and_then(|child| child.try_wait().unwrap()) {
                let log = std::fs::read_to_string(self.dir.path().join(format!("n{index}.log"))).unwrap_or_default();
                return Err(format!("NATS server {index} exited ({status}):\n{log}"));
            }
            if agent.get(&url).call().is_ok_and(|response| response.status() == 200) {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "NATS server {index} did not become healthy in two minutes");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every server's client URL, comma-separated, as `--cluster` takes them.
    pub fn urls(&self) -> String {
        self.urls_as("nats", "127.0.0.1")
    }

    /// Every server's client URL with `scheme` and `host` (`tls` and `localhost`, to name the
    /// host a certificate was made for), comma-separated.
    pub fn urls_as(&self, scheme: &str, host: &str) -> String {
        self.client_ports.iter().map(|port| format!("{scheme}://{host}:{port}")).collect::<Vec<_>>().join(",")
    }

    /// Kills server `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        let mut child = self.nodes[index].take().expect("a live server");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The consumers of `stream` as their leaders report them (a follower's view lags): name,
    /// pending and unacknowledged counts.
    pub fn consumers(&self, stream: &str) -> Vec<(String, u64, u64)> {
        let mut found = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.is_none() {
                continue;
            }
            let url =
                format!("http://127.0.0.1:{}/jsz?accounts=true&streams=true&consumers=true", self.monitor_ports[index]);
            let Ok(mut response) = ureq::get(&url).call() else { continue };
            let json: serde_json::Value = response.body_mut().read_json().unwrap();
            for account in json["account_details"].as_array().into_iter().flatten() {
                for detail in account["stream_detail"].as_array().into_iter().flatten() {
                    if detail["name"] != stream {
                        continue;
                    }
                    for consumer in detail["consumer_detail"].as_array().into_iter().flatten() {
                        // A leader lists the other replicas; a follower lists the leader among them.
                        let cluster = &consumer["cluster"];
                        let by_leader = cluster.is_null()
                            || cluster["replicas"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .all(|replica| replica["name"] != cluster["leader"]);
                        if by_leader {
                            found.push((
                                consumer["name"].as_str().unwrap_or_default().to_owned(),
                                consumer["num_pending"].as_u64().unwrap_or(0),
                                consumer["num_ack_pending"].as_u64().unwrap_or(0),
                            ));
                        }
                    }
                }
            }
        }
        found
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
