//! Cluster mode on a network: the connection to NATS (a token, an account's user and password,
//! TLS with the servers' CA and a client certificate), each against a nats-server that requires
//! them, with the wrong ones refused at start and a worker that says why; and the admin API over
//! HTTPS, which the CLI and peer workers reach only when they trust the authority that signed
//! its certificate.

use std::path::{Path, PathBuf};

use fnhost::nats::{NatsEngine, NatsError, NatsSecurity};
use fnhost_test_support::Nats;
use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};

use crate::support::{Fnhost, Worker, fnhost_command, guest};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn connect(urls: &str, security: &NatsSecurity) -> Result<NatsEngine, NatsError> {
    NatsEngine::connect(urls, 1, security)
}

#[test]
fn a_token_and_an_accounts_password_are_required_and_wrong_ones_are_refused_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let tokened = Nats::start_with(1, "authorization { token: \"the-right-token\" }");
    let right = write(dir.path(), "token", "the-right-token\n");
    let wrong = write(dir.path(), "wrong-token", "someone-elses-token");
    let with_token = |path: &Path| NatsSecurity { token_file: Some(path.to_owned()), ..NatsSecurity::default() };
    connect(&tokened.urls(), &with_token(&right)).expect("the right token connects");
    assert!(matches!(connect(&tokened.urls(), &with_token(&wrong)), Err(NatsError::Refused { .. })));
    assert!(matches!(connect(&tokened.urls(), &NatsSecurity::default()), Err(NatsError::Refused { .. })));

    let accounts = Nats::start_with(
        1,
        "accounts { FNHOST: { jetstream: enabled, users: [ { user: fnhost, password: \"the-right-password\" } ] } }",
    );
    let password = write(dir.path(), "password", "the-right-password");
    let wrong_password = write(dir.path(), "wrong-password", "guess");
    let as_user = |user: &str, path: &Path| NatsSecurity {
        user: Some(user.into()),
        password_file: Some(path.to_owned()),
        ..NatsSecurity::default()
    };
    let engine = connect(&accounts.urls(), &as_user("fnhost", &password)).expect("the account's user connects");
    drop(engine);
    for refused in [as_user("fnhost", &wrong_password), as_user("intruder", &password)] {
        let error = connect(&accounts.urls(), &refused).err().expect("refused");
        assert!(matches!(error, NatsError::Refused { .. }), "{error}");
        assert!(error.to_string().contains("--nats-password-file"), "names the flags: {error}");
    }
}

#[test]
fn incomplete_or_unreadable_settings_name_their_flag_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "t");
    let empty = write(dir.path(), "empty", "\n");
    let missing = dir.path().join("missing");
    // No server listens there: each must fail on its settings first.
    let nowhere = "nats://127.0.0.1:9";
    let cases = [
        (NatsSecurity { user: Some("u".into()), ..NatsSecurity::default() }, "--nats-user"),
        (NatsSecurity { password_file: Some(token.clone()), ..NatsSecurity::default() }, "--nats-password-file"),
        (NatsSecurity { token_file: Some(missing.clone()), ..NatsSecurity::default() }, "--nats-token-file"),
        (NatsSecurity { token_file: Some(empty), ..NatsSecurity::default() }, "is empty"),
        (NatsSecurity { creds_file: Some(token.clone()), ..NatsSecurity::default() }, "not a NATS credentials file"),
        (
            NatsSecurity {
                creds_file: Some(token.clone()),
                token_file: Some(token.clone()),
                ..NatsSecurity::default()
            },
            "give one way of logging in",
        ),
        (NatsSecurity { tls_cert: Some(token.clone()), ..NatsSecurity::default() }, "--nats-tls-key"),
        (NatsSecurity { tls_ca: Some(missing), ..NatsSecurity::default() }, "--nats-tls-ca"),
    ];
    for (security, expected) in cases {
        let error = connect(nowhere, &security).err().expect("refused");
        assert!(matches!(error, NatsError::BadSecurity { .. }), "{security:?}: {error}");
        assert!(error.to_string().contains(expected), "{security:?}: expected `{expected}` in {error}");
    }
}

/// A CA, and certificates it signed, as PEM files in a directory.
struct Authority {
    cert: Certificate,
    key: KeyPair,
    pem: PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pem = write(dir, &format!("{name}-ca.pem"), &cert.pem());
        Self { cert, key, pem }
    }

    /// A certificate for `names` and its key, as files `NAME.pem` and `NAME.key`.
    fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (write(dir, &format!("{name}.pem"), &cert.pem()), write(dir, &format!("{name}.key"), &key.serialize_pem()))
    }
}

#[test]
fn tls_with_a_client_certificate_connects_and_another_authoritys_certificates_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Authority::new(dir.path(), "ours");
    let theirs = Authority::new(dir.path(), "theirs");
    let (server_cert, server_key) = ours.issue(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = ours.issue(dir.path(), "client", &["fnhost-worker"]);
    let (foreign_cert, foreign_key) = theirs.issue(dir.path(), "foreign", &["fnhost-worker"]);
    let nats = Nats::start_with(
        1,
        &format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}",
            server_cert.to_str().unwrap(),
            server_key.to_str().unwrap(),
            ours.pem.to_str().unwrap()
        ),
    );
    let urls = nats.urls_as("tls", "localhost");
    let tls = |ca: &Path, cert: &Path, key: &Path| NatsSecurity {
        tls_ca: Some(ca.to_owned()),
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
        ..NatsSecurity::default()
    };
    connect(&urls, &tls(&ours.pem, &client_cert, &client_key)).expect("our CA and our client certificate connect");

    for (case, security) in [
        ("a client certificate from another CA", tls(&ours.pem, &foreign_cert, &foreign_key)),
        ("a server checked against another CA", tls(&theirs.pem, &client_cert, &client_key)),
        ("no client certificate", NatsSecurity { tls_ca: Some(ours.pem.clone()), ..NatsSecurity::default() }),
    ] {
        let error = connect(&urls, &security).err().unwrap_or_else(|| panic!("{case} connected"));
        assert!(matches!(error, NatsError::Refused { .. }), "{case}: {error}");
        assert!(error.to_string().contains("--nats-tls-ca"), "{case}: names the flags: {error}");
    }
}

#[test]
fn a_worker_with_the_wrong_credentials_stops_at_start_and_says_which_flags_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_with(1, "authorization { token: \"the-right-token\" }");
    let wrong = write(dir.path(), "token", "not-it");
    let fnhost = Fnhost::new();
    let stderr = fnhost.fails(&[
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--cluster",
        &nats.urls(),
        "--nats-token-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(stderr.contains("refused the connection"), "{stderr}");
    assert!(stderr.contains("--nats-token-file"), "{stderr}");
    let stderr = fnhost.fails(&["worker", "--listen", "127.0.0.1:0", "--nats-token-file", wrong.to_str().unwrap()]);
    assert!(stderr.contains("--cluster"), "the NATS flags need cluster mode: {stderr}");
}

/// Runs `fnhost ARGS --url URL` with FNHOST_TLS_CA set to `authority`, if given.
fn cli_trusting(url: &str, authority: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut command = fnhost_command();
    command.args(args).args(["--url", url]);
    if let Some(authority) = authority {
        command.env("FNHOST_TLS_CA", authority);
    }
    let output = command.output().expect("fnhost runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

#[test]
fn workers_serve_https_and_a_peer_with_another_authoritys_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Authority::new(dir.path(), "ours");
    let theirs = Authority::new(dir.path(), "theirs");
    let (trusted_cert, trusted_key) = ours.issue(dir.path(), "trusted", &["127.0.0.1", "localhost"]);
    let (foreign_cert, foreign_key) = theirs.issue(dir.path(), "foreign", &["127.0.0.1", "localhost"]);
    let nats = Nats::start(1);
    let urls = nats.urls();
    let data: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |data: &Path, id: &str, cert: &Path, key: &Path| {
        let (cert, key, ca) = (cert.to_str().unwrap(), key.to_str().unwrap(), ours.pem.to_str().unwrap());
        let flags = ["--cluster", &urls, "--worker-id", id, "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca];
        Worker::start_with(data, &flags)
    };
    // Both trust our authority; only the first has a certificate it signed.
    let trusted = start(data[0].path(), "trusted", &trusted_cert, &trusted_key);
    let foreign = start(data[1].path(), "foreign", &foreign_cert, &foreign_key);
    assert!(trusted.url.starts_with("https://127.0.0.1:"), "{}", trusted.url);

    let (listed, stdout, stderr) = cli_trusting(&trusted.url, Some(&ours.pem), &["functions", "list"]);
    assert!(listed && stdout.trim() == "[]", "the CLI trusting our authority reaches the worker: {stderr}");
    for (case, authority) in [("no authority", None), ("another authority", Some(theirs.pem.as_path()))] {
        let (listed, _, stderr) = cli_trusting(&trusted.url, authority, &["functions", "list"]);
        assert!(!listed, "{case}: the CLI must not trust the worker");
        assert!(
            stderr.contains("did not prove who it is over TLS") && stderr.contains("--tls-trust-cert-path"),
            "{case}: {stderr}"
        );
    }
    let (listed, _, stderr) = cli_trusting(&foreign.url, Some(&ours.pem), &["functions", "list"]);
    assert!(!listed && stderr.contains("over TLS"), "a worker whose certificate another authority signed: {stderr}");

    // One instance on each worker: each asks the other for the status of its instance.
    let wasm = guest("exclamation");
    let create =
        ["functions", "create", "--wasm", wasm.to_str().unwrap(), "--name", "f", "-i", "in", "--parallelism", "2"];
    let (created, _, stderr) = cli_trusting(&trusted.url, Some(&ours.pem), &create);
    assert!(created, "{stderr}");
    let status = |worker: &Worker, authority: &Path| -> serde_json::Value {
        let (ok, stdout, stderr) = cli_trusting(&worker.url, Some(authority), &["functions", "status", "--name", "f"]);
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    let instance_on = |status: &serde_json::Value, worker: &str| -> serde_json::Value {
        let instances = status["instances"].as_array().unwrap();
        instances.iter().find(|instance| instance["status"]["workerId"] == worker).cloned().unwrap_or_default()
    };
    let mut seen = serde_json::Value::Null;
    trusted.wait_for("an instance running on each worker, the foreign one's refused over TLS", || {
        seen = status(&trusted, &ours.pem);
        let mine = instance_on(&seen, "trusted");
        let theirs = instance_on(&seen, "foreign");
        mine["status"]["running"] == true
            && theirs["status"]["error"]
                .as_str()
                .is_some_and(|error| error.contains("did not prove who it is over TLS"))
    });
    // The foreign worker trusts our authority, so it reads the trusted worker's instance.
    foreign.wait_for("the foreign worker to read the trusted worker's instance", || {
        instance_on(&status(&foreign, &theirs.pem), "trusted")["status"]["running"] == true
    });
}

#[test]
fn a_cluster_worker_listening_off_loopback_without_tls_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let token = "operator-0123456789abcdef0123456789abcdef";
    let access = write(dir.path(), "access.yaml", &format!("operatorTokens: [{token}]\nworkerToken: {token}\n"));
    let nats = Nats::start(1);
    let data = tempfile::tempdir().unwrap();
    let worker = Worker::start_with(
        data.path(),
        &["--listen", "0.0.0.0:0", "--cluster", &nats.urls(), "--access", access.to_str().unwrap()],
    );
    let log = worker.log();
    assert!(log.contains("plain HTTP") && log.contains("--tls-cert and --tls-key"), "{log}");
}
