//! Every name a tenant can set, in every field of every path and verb: other tenants' names and
//! malformed ones.

use super::*;
use crate::support::Fnhost;

/// The names evil tries in each name field: acme's names, percent-encoded and dot-segment walks,
/// NUL, a slash, a huge name and an empty one.
fn hostile_names() -> Vec<String> {
    let huge = "x".repeat(10 * 1024);
    ["acme%2Fns%2Ff", "..%2F..%2Facme%2Fns%2Ff", "%00", "a/b", "%2F", "..", huge.as_str(), ""]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_name_field_of_every_path_and_verb_refuses_other_tenants_and_malformed_names() {
    let fnhost = Fnhost::new();
    let worker = start_worker(&fnhost, "");
    for (token, tenant) in [(ACME, "acme"), (EVIL, "evil")] {
        let fqfn = format!("{tenant}/ns/f");
        let io = [format!("{tenant}/ns/in"), format!("{tenant}/ns/out")];
        let created = create(&worker, token, "exclamation", &fqfn, &["-i", &io[0], "-o", &io[1]]);
        assert!(created.success, "{}", created.stderr);
    }
    produce(&worker, ACME, "acme/ns/in", &["acme-private".to_owned()]);
    assert_eq!(worker.read_as(Some(ACME), "acme/ns/out", 1), ["acme-private!"]);
    let secret = json(r#"{"key": "secret", "stringValue": "acme-secret"}"#);
    let (status, answer) = worker.http_as(Some(ACME), "POST", "/admin/v3/functions/acme/ns/f/state/secret", secret);
    assert_eq!(status, 200, "{answer}");

    // Each path with its name fields, as evil would send it; `{field}` is where a name goes.
    let function = "/admin/v3/functions/{tenant}/{namespace}/{function}";
    let topic = "/topics/persistent/{tenant}/{namespace}/{topic}";
    let admin_topic = "/admin/v2/persistent/{tenant}/{namespace}/{topic}";
    let namespace = "/admin/v2/namespaces/{tenant}/{namespace}";
    let paths: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", "/admin/v3/functions/{tenant}/{namespace}".into(), None),
        ("GET", function.into(), None),
        ("DELETE", function.into(), None),
        ("GET", format!("{function}/status"), None),
        ("GET", format!("{function}/stats"), None),
        ("GET", format!("{function}/{{instance}}/status"), None),
        ("GET", format!("{function}/{{instance}}/stats"), None),
        ("POST", format!("{function}/start"), None),
        ("POST", format!("{function}/{{instance}}/stop"), None),
        ("POST", format!("{function}/restart"), None),
        ("POST", format!("{function}/trigger"), Some("{}")),
        ("GET", format!("{function}/state/{{key}}"), None),
        ("POST", format!("{function}/state/{{key}}"), Some(r#"{"stringValue": "forged"}"#)),
        ("POST", topic.into(), Some(r#"{"messages": [{"payload": "Zm9yZ2Vk"}]}"#)),
        ("POST", format!("{topic}/subscription/{{subscription}}/receive"), Some("{}")),
        ("POST", format!("{topic}/subscription/{{subscription}}/acknowledge"), Some(r#"{"messageIds": []}"#)),
        ("GET", "/admin/v2/persistent/{tenant}/{namespace}".into(), None),
        ("PUT", admin_topic.into(), None),
        ("DELETE", format!("{admin_topic}?force=true"), None),
        ("GET", format!("{admin_topic}/stats"), None),
        ("GET", format!("{admin_topic}/subscriptions"), None),
        ("GET", format!("{admin_topic}/examinemessage?initialPosition=earliest"), None),
        ("DELETE", format!("{admin_topic}/subscription/{{subscription}}"), None),
        ("POST", format!("{admin_topic}/subscription/{{subscription}}/resetcursor/0"), None),
        ("POST", format!("{admin_topic}/subscription/{{subscription}}/resetcursor"), Some(r#"{"messageId": "0"}"#)),
        ("POST", format!("{admin_topic}/subscription/{{subscription}}/skip/1"), None),
        ("POST", format!("{admin_topic}/subscription/{{subscription}}/skip_all"), None),
        ("GET", format!("{admin_topic}/subscription/{{subscription}}/position/1"), None),
        ("GET", namespace.into(), None),
        ("POST", format!("{namespace}/retention"), Some(r#"{"retentionTimeInMinutes": -1, "retentionSizeInMB": -1}"#)),
        ("POST", format!("{namespace}/messageTTL"), Some("1")),
        ("POST", format!("{namespace}/backlogQuota"), Some(r#"{"limitSize": 1, "policy": "producer_exception"}"#)),
    ];
    let own = [
        ("tenant", "evil"),
        ("namespace", "ns"),
        ("function", "f"),
        ("instance", "0"),
        ("key", "k"),
        ("topic", "in"),
        ("subscription", "s"),
    ];
    let leaks = |answer: &str| answer.contains("acme-secret") || answer.contains("acme-private");
    for (method, template, body) in &paths {
        for (field, _) in own.iter().filter(|(field, _)| template.contains(&format!("{{{field}}}"))) {
            let mut names = hostile_names();
            if *field == "tenant" {
                names.push("acme".into());
            }
            for name in names {
                let path = own.iter().fold(template.clone(), |path, (other, value)| {
                    path.replace(&format!("{{{other}}}"), if other == field { &name } else { value })
                });
                let (status, answer) = worker.http_as(Some(EVIL), method, &path, body.map(json).flatten());
                let shown = format!(
                    "{method} {} ({field} = {:.40}): {status} {:.300}",
                    &path[..path.len().min(120)],
                    name,
                    answer
                );
                assert!(!leaks(&answer.to_string()), "{shown}");
                assert!(status < 500, "{shown}");
                // A state key is the function's own to name: a name with slashes is just a key.
                let keys_own_name = *field == "key" && !["%00", ""].contains(&name.as_str()) && name.len() < 1024;
                if !keys_own_name {
                    assert!((400..500).contains(&status), "{shown}");
                }
            }
        }
    }

    // The CLI verbs, with each name given where the function or topic goes.
    let mut fqfns: Vec<String> = hostile_names().into_iter().map(|name| format!("evil/ns/{name}")).collect();
    fqfns.extend(["acme/ns/f".to_owned(), String::new(), "evil//f".to_owned()]);
    let verbs: [&[&str]; 10] = [
        &["functions", "get"],
        &["functions", "status"],
        &["functions", "stats"],
        &["functions", "stop"],
        &["functions", "start"],
        &["functions", "restart"],
        &["functions", "delete"],
        &["functions", "querystate", "--key", "secret"],
        &["functions", "putstate", "--state", r#"{"key": "secret", "stringValue": "forged"}"#],
        &["functions", "trigger", "--trigger-value", "x"],
    ];
    for verb in verbs {
        for fqfn in &fqfns {
            let mut args = verb.to_vec();
            args.extend(["--fqfn", fqfn]);
            let run = worker.cli_as(Some(EVIL), &args);
            let shown = format!("{verb:?} {:.60}: {:.300}", fqfn, run.stderr);
            assert!(!run.success && !run.stderr.trim().is_empty(), "{shown}");
            assert!(!run.stderr.contains("panicked") && !leaks(&run.stdout) && !leaks(&run.stderr), "{shown}");
        }
    }
    let mut topics: Vec<String> = hostile_names().into_iter().map(|name| format!("evil/ns/{name}")).collect();
    topics.extend(["acme/ns/in".to_owned(), "acme/ns/out".to_owned(), "persistent://acme/ns/out".to_owned()]);
    for topic in &topics {
        let verbs = [
            vec!["topics", "produce", topic, "-m", "forged"],
            vec!["topics", "consume", topic, "--until-idle"],
            vec!["topics", "stats", topic],
            vec!["topics", "delete", topic, "--force"],
            vec!["topics", "clear-backlog", topic, "-s", "audit"],
            vec!["topics", "examine-message", topic],
        ];
        for args in verbs {
            let run = worker.cli_as(Some(EVIL), &args);
            let shown = format!("{:?}: {:.300}", &args[..2], run.stderr);
            assert!(!run.success && !run.stderr.trim().is_empty(), "{topic:.60} {shown}");
            assert!(!run.stderr.contains("panicked") && !leaks(&run.stdout) && !leaks(&run.stderr), "{shown}");
        }
    }

    // acme's function, state, outputs and cursor are as they were.
    let status = worker.cli_as(Some(ACME), &["functions", "status", "--fqfn", "acme/ns/f"]);
    assert!(status.stdout.contains("\"numRunning\": 1"), "{}", status.stdout);
    let state = worker.cli_as(Some(ACME), &["functions", "querystate", "--fqfn", "acme/ns/f", "--key", "secret"]);
    assert!(state.stdout.contains("acme-secret"), "{}", state.stderr);
    let outputs = worker.cli_as(Some(ACME), &["topics", "consume", "acme/ns/out", "-s", "audit", "--until-idle"]);
    assert_eq!(outputs.stdout.lines().collect::<Vec<_>>(), ["acme-private!"], "{}", outputs.stderr);
    let inputs = worker.cli_as(Some(ACME), &["topics", "consume", "acme/ns/in", "-s", "audit", "--until-idle"]);
    assert_eq!(inputs.stdout.lines().collect::<Vec<_>>(), ["acme-private"], "{}", inputs.stderr);
    let stats = worker.cli_as(Some(ACME), &["functions", "stats", "--fqfn", "acme/ns/f"]);
    assert!(stats.stdout.contains("\"processedSuccessfullyTotal\": 1"), "processed once: {}", stats.stdout);
}
