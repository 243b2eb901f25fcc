//! Names users type: fully qualified function names and topic names, parsed once and validated.

use std::fmt;

use crate::limits::{MAX_NAME_LEN, MAX_TOPIC_NAME_LEN, MAX_TOPICS_PATTERN_COMPILED_SIZE, MAX_TOPICS_PATTERN_LEN};

/// The tenant a name belongs to when none is given, as in Pulsar.
pub const DEFAULT_TENANT: &str = "public";
/// The namespace a name belongs to when none is given, as in Pulsar.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A name that could not be parsed, with what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct NameError(String);

/// What a function's name gets to name its default dead-letter topic.
const DEAD_LETTER_SUFFIX: &str = "-DLQ";

/// A fully qualified function name: `tenant/namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fqfn {
    tenant: String,
    namespace: String,
    name: String,
}

impl Fqfn {
    /// Builds a name from its three parts, validating each.
    pub fn new(tenant: &str, namespace: &str, name: &str) -> Result<Self, NameError> {
        check_segment("tenant", tenant)?;
        check_segment("namespace", namespace)?;
        check_segment("function name", name)?;
        if name.len() + DEAD_LETTER_SUFFIX.len() > MAX_NAME_LEN {
            return Err(NameError(format!(
                "the function name `{name}` is {} bytes long; the limit is MAX_NAME_LEN ({MAX_NAME_LEN}) less {}, to leave room for the dead-letter topic's {DEAD_LETTER_SUFFIX} suffix",
                name.len(),
                DEAD_LETTER_SUFFIX.len()
            )));
        }
        Ok(Self { tenant: tenant.into(), namespace: namespace.into(), name: name.into() })
    }

    /// The dead-letter topic used when none is given: `<name>-DLQ` in the function's namespace.
    pub fn default_dead_letter_topic(&self) -> TopicName {
        TopicName(format!("persistent://{}/{}/{}{DEAD_LETTER_SUFFIX}", self.tenant, self.namespace, self.name))
    }

    /// Parses `tenant/namespace/name`.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        match text.split('/').collect::<Vec<_>>().as_slice() {
            [tenant, namespace, name] => Self::new(tenant, namespace, name),
            _ => Err(NameError(format!(
                "`{text}` is not a fully qualified function name: expected tenant/namespace/name, for example public/default/my-function"
            ))),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The function's own name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Fqfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.namespace, self.name)
    }
}

/// A topic's fully qualified name, `persistent://tenant/namespace/topic`.
///
/// Short forms are accepted as Pulsar accepts them: `topic` means `persistent://public/default/topic`
/// and `tenant/namespace/topic` means `persistent://tenant/namespace/topic`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Parses any of the accepted forms.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let rest = match text.split_once("://") {
            Some(("persistent", rest)) => rest,
            Some((domain, _)) => {
                return Err(NameError(format!(
                    "topic `{text}`: only persistent topics exist in fnhost, not `{domain}://`; use persistent://tenant/namespace/topic or a short name"
                )));
            }
            None => text,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (tenant, namespace, local) = match parts.as_slice() {
            [local] => (DEFAULT_TENANT, DEFAULT_NAMESPACE, *local),
            [tenant, namespace, local] => (*tenant, *namespace, *local),
            _ => {
                return Err(NameError(format!(
                    "`{text}` is not a topic name: expected topic, tenant/namespace/topic or persistent://tenant/namespace/topic"
                )));
            }
        };
        check_segment("tenant", tenant).map_err(|e| in_topic(text, e))?;
        check_segment("namespace", namespace).map_err(|e| in_topic(text, e))?;
        check_segment("topic", local).map_err(|e| in_topic(text, e))?;
        let full = format!("persistent://{tenant}/{namespace}/{local}");
        if full.len() > MAX_TOPIC_NAME_LEN {
            return Err(NameError(format!(
                "topic `{text}` is {} bytes long; the limit (MAX_TOPIC_NAME_LEN) is {MAX_TOPIC_NAME_LEN}",
                full.len()
            )));
        }
        Ok(Self(full))
    }

    /// The fully qualified form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant the topic belongs to.
    pub fn tenant(&self) -> &str {
        self.segments().0
    }

    /// The namespace the topic belongs to, within its tenant.
    pub fn namespace(&self) -> &str {
        self.segments().1
    }

    fn segments(&self) -> (&str, &str) {
        let rest = &self.0["persistent://".len()..];
        let mut parts = rest.splitn(3, '/');
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
    }
}

/// Which topics a function may read and publish to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TopicAccess {
    /// Every topic: what `localrun` gives, since its user owns the whole data directory.
    #[default]
    Any,
    /// The topics of the function's own tenant, and of the tenants (`tenant`) and namespaces
    /// (`tenant/namespace`) the worker's operator granted it: what a worker gives.
    Tenant {
        /// The function's tenant.
        tenant: String,
        /// More tenants and namespaces, from the worker's access file.
        granted: Vec<String>,
    },
}

impl TopicAccess {
    /// True when a function with this access may read and publish to `topic`.
    pub fn allows(&self, topic: &TopicName) -> bool {
        match self {
            Self::Any => true,
            Self::Tenant { tenant, granted } => {
                topic.tenant() == tenant
                    || granted.iter().any(|grant| match grant.split_once('/') {
                        Some((tenant, namespace)) => topic.tenant() == tenant && topic.namespace() == namespace,
                        None => topic.tenant() == grant,
                    })
            }
        }
    }

    /// [`TopicAccess::allows`], as an error that says what to do; `role` says what the topic is for.
    pub fn check(&self, topic: &TopicName, role: &str) -> Result<(), NameError> {
        let Self::Tenant { tenant, .. } = self else { return Ok(()) };
        if self.allows(topic) {
            return Ok(());
        }
        Err(NameError(format!(
            "{role} {topic} belongs to tenant `{}`: functions of tenant `{tenant}` read and publish only their own tenant's topics, unless the worker's operator grants more (grantedTopics of tenant `{tenant}` in the access file)",
            topic.tenant()
        )))
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A durable subscription's name: a local name inside a tenant and namespace.
///
/// Every name a tenant gives (`--subs-name`, a REST consumer's path) lands inside that tenant, so
/// no tenant can name, join or delete another's subscription. It shows as `tenant/namespace/local`,
/// which for a function's default subscription is its fully qualified name, as in Pulsar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionName {
    tenant: String,
    namespace: String,
    local: String,
}

impl SubscriptionName {
    /// The subscription `local` inside `tenant/namespace`; `local` is one name segment, never a path.
    pub fn new(tenant: &str, namespace: &str, local: &str) -> Result<Self, NameError> {
        check_segment("tenant", tenant)?;
        check_segment("namespace", namespace)?;
        check_segment("subscription name", local)?;
        Ok(Self { tenant: tenant.into(), namespace: namespace.into(), local: local.into() })
    }

    /// A function's default subscription: its own name, in its namespace.
    pub fn of_function(fqfn: &Fqfn) -> Self {
        Self { tenant: fqfn.tenant.clone(), namespace: fqfn.namespace.clone(), local: fqfn.name.clone() }
    }

    /// The subscription `local` of a consumer of `topic`, in the topic's namespace.
    pub fn on_topic(topic: &TopicName, local: &str) -> Result<Self, NameError> {
        Self::new(topic.tenant(), topic.namespace(), local)
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The namespace it belongs to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name as given, without its tenant and namespace.
    pub fn local(&self) -> &str {
        &self.local
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.namespace, self.local)
    }
}

/// A regular expression over topic names, for `--topics-pattern`: every topic whose fully qualified
/// name it matches in full is an input, including topics created later.
///
/// A pattern that starts with `persistent://` is matched against whole names; any other pattern is
/// matched against the topic's own name in a given namespace, as `in-.*` for `persistent://public/default/in-.*`.
#[derive(Clone, Debug)]
pub struct TopicPattern {
    text: String,
    regex: regex::Regex,
    access: TopicAccess,
}

impl TopicPattern {
    /// Parses `text`; a pattern without a scheme applies to topics of `tenant/namespace`.
    pub fn parse(text: &str, tenant: &str, namespace: &str) -> Result<Self, NameError> {
        if text.len() > MAX_TOPICS_PATTERN_LEN {
            return Err(NameError(format!(
                "the topics pattern is {} bytes long; the limit (MAX_TOPICS_PATTERN_LEN) is {MAX_TOPICS_PATTERN_LEN}",
                text.len()
            )));
        }
        let full = match text.strip_prefix("persistent://") {
            Some(rest) => format!("^persistent://(?:{rest})$"),
            None if text.contains("://") => {
                return Err(NameError(format!(
                    "topics pattern `{text}`: only persistent topics exist in fnhost; start it with persistent:// or give a pattern over topic names"
                )));
            }
            None => format!("^persistent://{}/{}/(?:{text})$", regex::escape(tenant), regex::escape(namespace)),
        };
        let regex = regex::RegexBuilder::new(&full)
            .size_limit(MAX_TOPICS_PATTERN_COMPILED_SIZE)
            .build()
            .map_err(|error| NameError(format!("topics pattern `{text}` is not a regular expression: {error}")))?;
        Ok(Self { text: text.to_owned(), regex, access: TopicAccess::Any })
    }

    /// The same pattern, limited to the topics `access` allows: a pattern never reaches past
    /// its function's access, whatever it says.
    pub fn within(self, access: TopicAccess) -> Self {
        Self { access, ..self }
    }

    /// True when `topic` is one of the pattern's topics.
    pub fn matches(&self, topic: &TopicName) -> bool {
        self.regex.is_match(topic.as_str()) && self.access.allows(topic)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn in_topic(text: &str, error: NameError) -> NameError {
    NameError(format!("topic `{text}`: {}", error.0))
}

/// Checks a tenant and namespace as they appear in a path that names no function or topic.
pub fn check_namespace(tenant: &str, namespace: &str) -> Result<(), NameError> {
    check_segment("tenant", tenant)?;
    check_segment("namespace", namespace)
}

fn check_segment(what: &str, segment: &str) -> Result<(), NameError> {
    if segment.is_empty() {
        return Err(NameError(format!("the {what} is empty")));
    }
    if segment.len() > MAX_NAME_LEN {
        return Err(NameError(format!(
            "the {what} `{segment}` is {} bytes long; the limit (MAX_NAME_LEN) is {MAX_NAME_LEN}",
            segment.len()
        )));
    }
    if segment == "." || segment == ".." {
        return Err(NameError(format!("the {what} `{segment}` is a dot segment; use letters, digits and - _ . = :")));
    }
    if let Some(bad) = segment.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.=:".contains(*c))) {
        return Err(NameError(format!("the {what} `{segment}` contains `{bad}`; use letters, digits and - _ . = :")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_name_stays_inside_its_tenant() {
        let topic = TopicName::parse("persistent://evil/ns/t").unwrap();
        let name = SubscriptionName::on_topic(&topic, "s").unwrap();
        assert_eq!((name.to_string(), name.tenant()), ("evil/ns/s".to_owned(), "evil"));
        let fqfn = Fqfn::parse("acme/ns/f").unwrap();
        assert_eq!(SubscriptionName::of_function(&fqfn).to_string(), fqfn.to_string());
        for hostile in ["acme/ns/f", "..", ".", "a\0b", "", "%2F", &"x".repeat(10_000)] {
            let error = SubscriptionName::on_topic(&topic, hostile).unwrap_err().to_string();
            assert!(error.contains("subscription name"), "{hostile:?}: {error}");
        }
    }

    #[test]
    fn a_tenant_reaches_its_own_topics_and_what_is_granted_and_a_pattern_no_further() {
        let access =
            TopicAccess::Tenant { tenant: "acme".into(), granted: vec!["shared".into(), "globex/public".into()] };
        let cases = [
            ("persistent://acme/any/t", true),
            ("persistent://shared/ns/t", true),
            ("persistent://globex/public/t", true),
            ("persistent://globex/private/t", false),
            ("persistent://acmes/ns/t", false),
            ("t", false),
        ];
        for (topic, allowed) in cases {
            let topic = TopicName::parse(topic).unwrap();
            assert_eq!(access.allows(&topic), allowed, "{topic}");
            assert_eq!(access.check(&topic, "input").is_ok(), allowed, "{topic}");
            assert!(TopicAccess::Any.allows(&topic));
        }
        let pattern = TopicPattern::parse("persistent://(acme|globex)/.*/t", "acme", "ns").unwrap().within(access);
        assert!(pattern.matches(&TopicName::parse("persistent://acme/x/t").unwrap()));
        assert!(!pattern.matches(&TopicName::parse("persistent://globex/private/t").unwrap()));
        let refusal = TopicAccess::Tenant { tenant: "acme".into(), granted: vec![] }
            .check(&TopicName::parse("globex/ns/t").unwrap(), "output topic")
            .unwrap_err()
            .to_string();
        assert!(refusal.contains("belongs to tenant `globex`") && refusal.contains("grantedTopics"), "{refusal}");
    }

    #[test]
    fn topic_short_forms_expand_to_the_persistent_default_namespace() {
        let cases = [
            ("input-topic", "persistent://public/default/input-topic"),
            ("acme/orders/in", "persistent://acme/orders/in"),
            ("persistent://acme/orders/in", "persistent://acme/orders/in"),
        ];
        for (given, full) in cases {
            assert_eq!(TopicName::parse(given).unwrap().as_str(), full, "{given}");
        }
    }

    #[test]
    fn topic_patterns_match_whole_names_in_their_namespace() {
        let short = TopicPattern::parse("in-.*", "acme", "orders").unwrap();
        let full = TopicPattern::parse("persistent://public/default/(a|b)", "acme", "orders").unwrap();
        let cases = [
            ("acme/orders/in-1", true, false),
            ("acme/orders/xin-1", false, false),
            ("public/default/in-1", false, false),
            ("a", false, true),
            ("ab", false, false),
        ];
        for (topic, by_short, by_full) in cases {
            let topic = TopicName::parse(topic).unwrap();
            assert_eq!((short.matches(&topic), full.matches(&topic)), (by_short, by_full), "{topic}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let cases = [
            ("non-persistent://a/b/c", "only persistent topics"),
            ("a/b", "is not a topic name"),
            ("a//c", "namespace is empty"),
            ("top ic", "contains ` `"),
        ];
        for (given, reason) in cases {
            let error = TopicName::parse(given).unwrap_err().to_string();
            assert!(error.contains(reason), "{given}: {error}");
        }
        assert!(TopicPattern::parse("in-(", "public", "default").unwrap_err().to_string().contains("not a regular"));
        assert!(Fqfn::parse("a/b").unwrap_err().to_string().contains("tenant/namespace/name"));
        assert_eq!(Fqfn::parse("t/ns/f").unwrap().to_string(), "t/ns/f");
    }
}
