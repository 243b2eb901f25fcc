//! A web page the local user opens, reaching a worker on loopback.

use super::*;
use crate::support::{Fnhost, Worker};

/// Sends `method path` with exactly `headers` (and `body`) over a plain socket, as a browser
/// could; returns the status.
fn raw_request(worker: &Worker, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    use std::io::{Read, Write};
    let address = worker.url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).and_then(|status| status.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[test]
fn a_web_page_cannot_reach_a_worker_without_tokens_and_the_cli_still_can() {
    let fnhost = Fnhost::new();
    let worker = Worker::start(fnhost.data_dir());
    let own_host = worker.url.strip_prefix("http://").unwrap();
    let own_origin = worker.url.clone();
    let payload = r#"{"messages": [{"payload": "Zm9yZ2Vk"}]}"#;
    let produce = "/topics/persistent/public/default/in";
    // What a page of another site can send: a simple POST (text/plain, no custom header), with
    // its own Origin, or through a name that resolves to loopback (DNS rebinding).
    let attacks = [
        ("POST", produce, vec![("Host", own_host), ("Content-Type", "text/plain")]),
        ("POST", produce, vec![("Host", own_host), ("Origin", "http://evil.example"), ("x-fnhost-client", "x")]),
        ("POST", produce, vec![("Host", "evil.example"), ("x-fnhost-client", "x")]),
        ("GET", "/admin/v3/functions/public/default", vec![("Host", "evil.example:80")]),
        ("POST", "/admin/v3/functions/public/default/f/stop", vec![("Host", own_host), ("Origin", "null")]),
    ];
    for (method, path, headers) in &attacks {
        assert_eq!(raw_request(&worker, method, path, headers, payload), 403, "{method} {path} {headers:?}");
    }
    let nothing = worker.cli(&["topics", "consume", "in", "-s", "check", "--until-idle"]);
    assert!(
        nothing.success && nothing.stdout.is_empty(),
        "nothing was produced: {} {}",
        nothing.stdout,
        nothing.stderr
    );
    // The worker's own origin, a loopback name and the CLI's header pass.
    let same_site = [("Host", own_host), ("Origin", own_origin.as_str()), ("x-fnhost-client", "page")];
    assert_eq!(raw_request(&worker, "POST", produce, &same_site, payload), 200);
    let port = own_host.rsplit_once(':').unwrap().1;
    let localhost = format!("localhost:{port}");
    let by_name = [("Host", localhost.as_str()), ("x-fnhost-client", "curl")];
    assert_eq!(raw_request(&worker, "POST", produce, &by_name, payload), 200);
    assert_eq!(worker.read("in", 2), ["forged", "forged"]);
    let produced = worker.cli(&["topics", "produce", "in", "-m", "from the cli"]);
    assert!(produced.success, "{}", produced.stderr);
}

#[test]
fn a_worker_with_tokens_refuses_other_origins_but_needs_no_client_header() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    let bearer = format!("Bearer {ACME}");
    let own_host = worker.url.strip_prefix("http://").unwrap().to_owned();
    let payload = r#"{"messages": [{"payload": "aGk="}]}"#;
    let produce = "/topics/persistent/acme/ns/in";
    let foreign = [("Host", own_host.as_str()), ("Authorization", bearer.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(raw_request(&worker, "POST", produce, &foreign, payload), 403);
    // A token is what a page cannot send, so Pulsar's clients need nothing more than it.
    let plain = [("Host", own_host.as_str()), ("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    assert_eq!(raw_request(&worker, "POST", produce, &plain, payload), 200);
    assert_eq!(worker.read_as(Some(ACME), "acme/ns/in", 1), ["hi"]);
}
