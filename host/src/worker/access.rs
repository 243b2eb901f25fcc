//! Who may use a worker, and how much of it each tenant may take: the access file
//! (`fnhost worker --access FILE`), its bearer tokens, topic grants and quotas.
//!
//! Tokens are kept only as SHA-256 digests, and a presented token is compared with every known
//! digest in constant time, so neither the comparison's time nor the process's memory gives one away.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::limits::{
    DEFAULT_RAM_BYTES, DEFAULT_TENANT_SHARE_DIVISOR, FUNCTION_CHANGES_PER_MINUTE, MAX_CONFIG_SIZE, MIN_TOKEN_LEN,
    RECEIVE_BYTES_PER_SECOND,
};
use crate::names::{Fqfn, TopicAccess};

/// What a presented token lets its bearer do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything: every tenant, and the worker's own paths.
    Operator,
    /// The functions, topics and state of one tenant.
    Tenant(String),
}

/// How much of the worker one tenant's functions may reserve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most functions.
    pub max_functions: u32,
    /// Most instances, summed over the tenant's functions' `--parallelism`.
    pub max_instances: u32,
    /// Most memory, summed over each instance's `--ram`.
    pub max_memory_bytes: u64,
    /// Most function creates, updates and deletes a minute on one worker, ten seconds' worth at
    /// once (see [`crate::limits::FUNCTION_CHANGES_PER_MINUTE`]).
    pub max_function_changes_per_minute: u32,
    /// Most bytes of messages received a second over HTTP on one worker (see
    /// [`crate::limits::RECEIVE_BYTES_PER_SECOND`]).
    pub max_receive_bytes_per_second: u32,
    /// Most bytes of messages the tenant's topics store, summed; `None`: no limit but the disk.
    pub max_storage_bytes: Option<u64>,
}

impl Quota {
    /// What a tenant may reserve of a worker of `worker_instances` when the access file sets no
    /// quota for it: one DEFAULT_TENANT_SHARE_DIVISOR-th of the instances (at least one), as many
    /// functions, and the default `--ram` for each instance; so that no tenant can take the
    /// whole worker.
    pub fn share_of(worker_instances: u32) -> Self {
        let instances = (worker_instances / DEFAULT_TENANT_SHARE_DIVISOR).max(1);
        Self {
            max_functions: instances,
            max_instances: instances,
            max_memory_bytes: u64::from(instances) * DEFAULT_RAM_BYTES,
            max_function_changes_per_minute: FUNCTION_CHANGES_PER_MINUTE,
            max_receive_bytes_per_second: RECEIVE_BYTES_PER_SECOND,
            max_storage_bytes: None,
        }
    }
}

/// The access file as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AccessFile {
    /// Tokens for everything.
    #[serde(default)]
    operator_tokens: Vec<String>,
    /// The token this worker presents to the other workers of its cluster: one of their operator tokens.
    worker_token: Option<String>,
    /// Quotas of tenants the file does not name, or names without them.
    #[serde(default)]
    tenant_defaults: QuotaFile,
    /// Per tenant.
    #[serde(default)]
    tenants: BTreeMap<String, TenantFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TenantFile {
    #[serde(default)]
    tokens: Vec<String>,
    /// More tenants (`tenant`) and namespaces (`tenant/namespace`) whose topics the tenant's
    /// functions may read and publish to.
    #[serde(default)]
    granted_topics: Vec<String>,
    #[serde(flatten)]
    quota: QuotaFile,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct QuotaFile {
    max_functions: Option<u32>,
    max_instances: Option<u32>,
    /// Bytes.
    max_memory_bytes: Option<u64>,
    max_function_changes_per_minute: Option<u32>,
    max_receive_bytes_per_second: Option<u32>,
    /// Bytes.
    max_storage_bytes: Option<u64>,
}

impl QuotaFile {
    fn over(self, base: Quota) -> Quota {
        Quota {
            max_functions: self.max_functions.unwrap_or(base.max_functions),
            max_instances: self.max_instances.unwrap_or(base.max_instances),
            max_memory_bytes: self.max_memory_bytes.unwrap_or(base.max_memory_bytes),
            max_function_changes_per_minute: self
                .max_function_changes_per_minute
                .unwrap_or(base.max_function_changes_per_minute),
            max_receive_bytes_per_second: self
                .max_receive_bytes_per_second
                .unwrap_or(base.max_receive_bytes_per_second),
            max_storage_bytes: self.max_storage_bytes.or(base.max_storage_bytes),
        }
    }
}

/// A tenant's grants and quota.
#[derive(Clone, Debug)]
struct Tenant {
    granted_topics: Vec<String>,
    quota: Quota,
}

/// The worker's access rules: tokens, grants and quotas.
#[derive(Clone, Debug)]
pub struct Access {
    /// Digests of the known tokens, with what each allows.
    tokens: Vec<([u8; 32], Role)>,
    worker_token: Option<String>,
    tenants: BTreeMap<String, Tenant>,
    defaults: Quota,
}

impl Default for Access {
    /// A worker without an access file: no tokens, so every client may do anything and quotas
    /// would separate nobody; the worker's own capacity is the only bound, but for the rate of
    /// function changes, which keeps the CPU for the functions that run.
    fn default() -> Self {
        let whole_worker = Quota {
            max_functions: u32::MAX,
            max_instances: u32::MAX,
            max_memory_bytes: u64::MAX,
            max_function_changes_per_minute: FUNCTION_CHANGES_PER_MINUTE,
            max_receive_bytes_per_second: RECEIVE_BYTES_PER_SECOND,
            max_storage_bytes: None,
        };
        Self { tokens: Vec::new(), worker_token: None, tenants: BTreeMap::new(), defaults: whole_worker }
    }
}

impl Access {
    /// Reads an access file (JSON or YAML) for a worker of `worker_instances`, whose share each
    /// tenant without a quota gets. Its errors never quote the file, which holds tokens.
    pub fn load(path: &Path, worker_instances: u32) -> anyhow::Result<Self> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|error| anyhow::anyhow!("cannot read {shown}: {error}"))?;
        anyhow::ensure!(
            text.len() <= MAX_CONFIG_SIZE,
            "the access file {shown} is {} bytes; the limit (MAX_CONFIG_SIZE) is {MAX_CONFIG_SIZE}",
            text.len()
        );
        let file: AccessFile = serde_saphyr::from_str(&text).map_err(|error| {
            let location = error.to_string().lines().find(|line| line.contains("line")).map(str::to_owned);
            anyhow::anyhow!(
                "the access file {shown} is not valid{}: its fields are operatorTokens, workerToken, tenantDefaults and tenants (each with tokens, grantedTopics, maxFunctions, maxInstances, maxMemoryBytes, maxFunctionChangesPerMinute and maxReceiveBytesPerSecond); see docs/SECURITY.md",
                location.map(|line| format!(" (near {})", redact(&line))).unwrap_or_default()
            )
        })?;
        Self::from_file(file, worker_instances).map_err(|reason| anyhow::anyhow!("the access file {shown}: {reason}"))
    }

    fn from_file(file: AccessFile, worker_instances: u32) -> Result<Self, String> {
        let defaults = file.tenant_defaults.over(Quota::share_of(worker_instances));
        let mut access =
            Self { tokens: Vec::new(), worker_token: file.worker_token, tenants: BTreeMap::new(), defaults };
        for token in &file.operator_tokens {
            access.add_token(token, Role::Operator, "an operator token")?;
        }
        for (name, tenant) in file.tenants {
            Fqfn::new(&name, "namespace", "name")
                .map_err(|error| format!("tenant `{name}` is not a valid tenant name: {error}"))?;
            for token in &tenant.tokens {
                access.add_token(token, Role::Tenant(name.clone()), &format!("a token of tenant `{name}`"))?;
            }
            for grant in &tenant.granted_topics {
                let valid = match grant.split_once('/') {
                    Some((granted, namespace)) => Fqfn::new(granted, namespace, "name").is_ok(),
                    None => Fqfn::new(grant, "namespace", "name").is_ok(),
                };
                if !valid {
                    return Err(format!(
                        "grantedTopics of tenant `{name}`: `{grant}` is neither a tenant nor tenant/namespace"
                    ));
                }
            }
            let quota = tenant.quota.over(defaults);
            access.tenants.insert(name, Tenant { granted_topics: tenant.granted_topics, quota });
        }
        if let Some(token) = &access.worker_token
            && access.role(token) != Some(Role::Operator)
        {
            return Err("workerToken must be one of the operatorTokens (workers call each other as operators)".into());
        }
        Ok(access)
    }

    fn add_token(&mut self, token: &str, role: Role, what: &str) -> Result<(), String> {
        let digest = match token.strip_prefix("sha256:") {
            Some(hex) => {
                parse_digest(hex).ok_or_else(|| format!("{what} starts with sha256: but is not 64 hex digits"))?
            }
            None if token.len() < MIN_TOKEN_LEN => {
                return Err(format!(
                    "{what} is {} characters; give at least {MIN_TOKEN_LEN} (MIN_TOKEN_LEN), for example `openssl rand -hex 32`",
                    token.len()
                ));
            }
            None => Sha256::digest(token.as_bytes()).into(),
        };
        if self.tokens.iter().any(|(known, _)| *known == digest) {
            return Err(format!("{what} is given twice; each token must be unique"));
        }
        self.tokens.push((digest, role));
        Ok(())
    }

    /// True when the file gave tokens: then every request but `/health` and `/openapi.yaml` needs one.
    pub fn enforced(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// What `token` allows, if it is known. Every known digest is compared, each in constant time.
    pub fn role(&self, token: &str) -> Option<Role> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (known, role) in &self.tokens {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(role.clone());
            }
        }
        found
    }

    /// The token this worker presents to the other workers of its cluster.
    pub fn worker_token(&self) -> Option<&str> {
        self.worker_token.as_deref()
    }

    /// The topics functions of `tenant` may read and publish to.
    pub fn topic_access(&self, tenant: &str) -> TopicAccess {
        let granted = self.tenants.get(tenant).map(|known| known.granted_topics.clone()).unwrap_or_default();
        TopicAccess::Tenant { tenant: tenant.to_owned(), granted }
    }

    /// The quota of `tenant`.
    pub fn quota(&self, tenant: &str) -> Quota {
        self.tenants.get(tenant).map_or(self.defaults, |known| known.quota)
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// A parser's line with anything quoted in it removed: the line may hold a token.
fn redact(line: &str) -> String {
    line.split(['"', '\'', '`']).step_by(2).collect::<Vec<_>>().join("…")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "operator-token-0123456789abcdef0123456789";
    const ACME: &str = "acme-token-0123456789abcdef0123456789abcd";

    fn access(yaml: &str) -> Result<Access, String> {
        Access::from_file(serde_saphyr::from_str(yaml).map_err(|error| error.to_string())?, 64)
    }

    #[test]
    fn tokens_map_to_roles_by_digest_and_unknown_ones_to_nothing() {
        let acme_digest: String = Sha256::digest(ACME.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect();
        let access = access(&format!(
            "operatorTokens: [{OPERATOR}]\nworkerToken: {OPERATOR}\ntenants:\n  acme:\n    tokens: ['sha256:{acme_digest}']\n    grantedTopics: [shared]\n    maxInstances: 4\n    maxFunctionChangesPerMinute: 2\n    maxReceiveBytesPerSecond: 1024\ntenantDefaults:\n  maxFunctions: 7\n"
        ))
        .unwrap();
        assert!(access.enforced());
        assert_eq!(access.role(OPERATOR), Some(Role::Operator));
        assert_eq!(access.role(ACME), Some(Role::Tenant("acme".into())));
        assert_eq!(access.role(&ACME[1..]), None);
        assert_eq!(access.role(""), None);
        let share = Quota::share_of(64);
        let expected = Quota {
            max_functions: 16,
            max_instances: 16,
            max_memory_bytes: 16 * DEFAULT_RAM_BYTES,
            max_function_changes_per_minute: FUNCTION_CHANGES_PER_MINUTE,
            max_receive_bytes_per_second: RECEIVE_BYTES_PER_SECOND,
            max_storage_bytes: None,
        };
        assert_eq!(share, expected);
        let acme = Quota {
            max_functions: 7,
            max_instances: 4,
            max_function_changes_per_minute: 2,
            max_receive_bytes_per_second: 1024,
            ..share
        };
        assert_eq!(access.quota("acme"), acme);
        assert_eq!(access.quota("globex"), Quota { max_functions: 7, ..share });
        assert_eq!(Quota::share_of(2).max_instances, 1, "a tiny worker still gives each tenant an instance");
        assert_eq!(
            access.topic_access("acme"),
            TopicAccess::Tenant { tenant: "acme".into(), granted: vec!["shared".into()] }
        );
        assert!(!Access::default().enforced());
    }

    #[test]
    fn weak_repeated_or_misplaced_tokens_are_refused_with_the_reason() {
        let cases = [
            ("operatorTokens: [short]", "at least 32 (MIN_TOKEN_LEN)"),
            (&format!("operatorTokens: [{OPERATOR}, {OPERATOR}]") as &str, "given twice"),
            (&format!("tenants: {{acme: {{tokens: [{ACME}]}}}}\nworkerToken: {ACME}"), "workerToken must be one of"),
            ("operatorTokens: ['sha256:zz']", "not 64 hex digits"),
            ("tenants: {'a b': {}}", "not a valid tenant name"),
            ("tenants: {acme: {grantedTopics: ['a/b/c']}}", "neither a tenant nor tenant/namespace"),
        ];
        for (yaml, expected) in cases {
            let error = access(yaml).unwrap_err();
            assert!(error.contains(expected), "{yaml}: {error}");
            assert!(!error.contains(OPERATOR) && !error.contains(ACME), "{yaml}: the error shows a token: {error}");
        }
    }

    #[test]
    fn a_file_that_does_not_parse_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.yaml");
        std::fs::write(&path, format!("operatorTokens: [\"{OPERATOR}\"]\nunknownField: \"{ACME}\"\n")).unwrap();
        let error = Access::load(&path, 64).unwrap_err().to_string();
        assert!(error.contains("is not valid") && error.contains("docs/SECURITY.md"), "{error}");
        assert!(!error.contains(OPERATOR) && !error.contains(ACME), "the error shows a token: {error}");
    }
}
