//! The web console in a real browser: Debian's Chromium driven by playwright-core
//! (tests/browser/console.mjs) as a tenant, with an axe-core check of every page. Screenshots are
//! kept in the target directory's `tmp/artifacts/console` (or `FNHOST_ARTIFACTS`).

use std::path::PathBuf;
use std::process::Command;

use crate::support::{ACME, GLOBEX, OPERATOR, Worker, guest, workspace};

#[test]
fn a_tenant_sees_its_functions_counts_state_output_logs_and_topics_in_the_console() {
    let browser_tests = workspace().join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").exists(),
        "the console test needs `npm install --prefix tests/browser` and Debian's chromium (scripts/test installs both)"
    );
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start_with_tenants(dir.path());
    let wasm = guest("session-duration");
    let wasm = wasm.to_str().unwrap();
    for (token, fqfn) in [(ACME, "acme/default/sessions"), (GLOBEX, "globex/default/other")] {
        let tenant = fqfn.split('/').next().unwrap();
        let (input, output) = (format!("{tenant}/default/events"), format!("{tenant}/default/ended"));
        let created = worker
            .cli_as(Some(token), &["functions", "create", "--wasm", wasm, "--fqfn", fqfn, "-i", &input, "-o", &output]);
        assert!(created.success, "{}", created.stderr);
    }

    // The console learns what a token reaches: a tenant's its tenant, the operator's everything,
    // and no token nothing.
    let (status, acme) = worker.http_as(Some(ACME), "GET", "/admin/v2/whoami", None);
    assert_eq!((status, &acme), (200, &serde_json::json!({"operator": false, "tenant": "acme", "cluster": false})));
    let (status, operator) = worker.http_as(Some(OPERATOR), "GET", "/admin/v2/whoami", None);
    assert_eq!((status, &operator), (200, &serde_json::json!({"operator": true, "cluster": false})));
    assert_eq!(worker.http_as(None, "GET", "/admin/v2/whoami", None).0, 401);
    assert_eq!(
        worker.http_as(Some("not-a-token-of-this-worker-0123456789abcdef"), "GET", "/admin/v2/whoami", None).0,
        401
    );
    // The assets need no token and show nothing of any tenant.
    for asset in ["/console", "/console/console.js", "/console/console.css", "/console/favicon.svg"] {
        let (status, body) = worker.http_as(None, "GET", asset, None);
        assert_eq!(status, 200, "{asset}");
        assert!(!body.to_string().contains("acme"), "{asset}");
    }

    // The console's headers forbid framing and any script, style or request not the worker's own.
    let response = ureq::get(&format!("{}/console", worker.url)).call().unwrap();
    let policy = response.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let page = ureq::get(&format!("{}/console", worker.url)).call().unwrap().into_body().read_to_string().unwrap();
    assert!(!page.contains("<script>") && !page.contains(" style="), "no inline script or style:\n{page}");

    let artifacts = std::env::var_os("FNHOST_ARTIFACTS")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts"), PathBuf::from)
        .join("console");
    let output = Command::new("node")
        .arg(browser_tests.join("console.mjs"))
        .env("FNHOST_URL", &worker.url)
        .env("FNHOST_TOKEN", ACME)
        .env("OTHER_FUNCTION", "other")
        .env("ARTIFACTS", &artifacts)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "the console test failed:\n{}\n{}\nworker log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        worker.log()
    );
    for page in ["sign-in", "functions", "function", "topics", "cluster"] {
        assert!(artifacts.join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
}
