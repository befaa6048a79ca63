//! A Mosquitto ACL file (`acl_file`) as an [`Authorizer`], read as Mosquitto reads it
//! (mosquitto.conf(5), and Mosquitto 2.0's `security_default.c` for what the manual
//! leaves out):
//!
//! ```text
//! # rules before any `user` line are the anonymous clients'
//! topic read public/#
//! user alice
//! topic readwrite alice/#         # read, write, readwrite or deny; none: readwrite
//! topic deny alice/secret/#
//! pattern write devices/%c/status # every client, %c its client id, %u its user name
//! ```
//!
//! A client's rules are its user's section (the anonymous one if it named no user),
//! then the patterns. Within each, `deny` rules come first: a topic a `deny` matches
//! is refused; otherwise the first rule that matches and grants the access decides; no
//! such rule refuses. A user's grants therefore come before a pattern's `deny`, as in
//! Mosquitto. Once patterns exist, a client whose user name or client id contains `+`
//! or `#` is refused everything (it could otherwise widen a pattern), and patterns with
//! `%u` do not apply to clients without a user name. `$`-topics match only rules that
//! start with `$` (a rule `#` does not reach `$SYS/...`).
//!
//! Applied to each PUBLISH and will (write), to each message as it is delivered, a
//! retained one included (read), and, beyond Mosquitto (which grants every
//! subscription and filters deliveries), to each SUBSCRIBE: a filter is refused when no
//! topic it matches could be read (a `deny` covers it whole, or no read grant overlaps
//! it). A filter some of whose topics are readable is granted, and deliveries are
//! filtered.
//!
//! Where this reads more than Mosquitto: blanks are spaces or tabs, and a comment may
//! be indented. A line Mosquitto would refuse is refused here too, naming the line.

use std::{
    cell::RefCell,
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use mqtt_topics::TopicFilter;

use super::{AuthFileError, Authorizer, ClientInfo};

/// The access bits of a rule (Mosquitto's `MOSQ_ACL_*`); none is `deny`.
const DENY: u8 = 0;
const READ: u8 = 1;
const WRITE: u8 = 2;

/// A `topic` rule: a filter and the access it grants (or `DENY`).
#[derive(Debug)]
struct Rule {
    access: u8,
    filter: Box<str>,
}

/// A `pattern` rule: a filter with `%u` / `%c` still to substitute.
#[derive(Debug)]
struct Pattern {
    access: u8,
    template: Box<str>,
    /// Whether it has `%u` (and so does not apply to clients without a user name).
    user: bool,
}

/// The rules of one ACL file.
#[derive(Debug, Default)]
struct Rules {
    /// Rules before any `user` line, for clients without a user name.
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Pattern>,
}

thread_local! {
    /// A filter with `%c` and `%u` substituted, per thread: built for each pattern
    /// checked, without allocating once it has grown.
    static EXPANDED: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Rules {
    /// The rules of `client`'s section (empty if it has none).
    fn section(&self, client: &ClientInfo<'_>) -> &[Rule] {
        match client.username {
            Some(user) => self.users.get(user).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        }
    }

    /// Whether patterns apply to `client` at all (see the module's documentation).
    fn patterns_apply(&self, client: &ClientInfo<'_>) -> bool {
        let dangerous = |s: &str| s.contains(['+', '#']);
        !self.patterns.is_empty()
            && !client.username.is_some_and(dangerous)
            && !dangerous(client.client_id)
    }

    /// Mosquitto's check of one topic for `access` (`READ` or `WRITE`).
    fn may(&self, client: &ClientInfo<'_>, topic: &str, access: u8) -> bool {
        self.decide(client, |rule_access, filter| {
            if !matches(filter, topic) {
                None
            } else if rule_access == DENY {
                Some(false)
            } else if rule_access & access != 0 {
                Some(true)
            } else {
                None
            }
        })
    }

    /// Whether a subscription to `filter` could receive anything: refused if a `deny`
    /// covers it whole, granted at the first read grant that overlaps it.
    fn may_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        self.decide(client, |rule_access, rule| {
            if rule_access == DENY {
                covers(rule, filter).then_some(false)
            } else if rule_access & READ != 0 && overlaps(rule, filter) {
                Some(true)
            } else {
                None
            }
        })
    }

    /// Runs `verdict` over `client`'s rules in order (its section, then the patterns
    /// substituted), denials first in each: the first `Some` decides; none refuses.
    fn decide(&self, client: &ClientInfo<'_>, verdict: impl Fn(u8, &str) -> Option<bool>) -> bool {
        for rule in self.section(client) {
            if let Some(v) = verdict(rule.access, &rule.filter) {
                return v;
            }
        }
        if !self.patterns_apply(client) {
            return false;
        }
        EXPANDED.with(|expanded| {
            let mut expanded = expanded.borrow_mut();
            for pattern in &self.patterns {
                if pattern.user && client.username.is_none() {
                    continue;
                }
                expand(&pattern.template, client, &mut expanded);
                if let Some(v) = verdict(pattern.access, &expanded) {
                    return v;
                }
            }
            false
        })
    }
}

/// `template` with `%c` replaced by the client id and `%u` by the user name, into
/// `out`, as Mosquitto substitutes (anywhere in the filter, left to right).
fn expand(template: &str, client: &ClientInfo<'_>, out: &mut String) {
    out.clear();
    let mut rest = template;
    while let Some(at) = rest.find('%') {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        if let Some(after) = from.strip_prefix("%c") {
            out.push_str(client.client_id);
            rest = after;
        } else if let (Some(after), Some(user)) = (from.strip_prefix("%u"), client.username) {
            out.push_str(user);
            rest = after;
        } else {
            out.push('%');
            rest = from.get(1..).unwrap_or_default();
        }
    }
    out.push_str(rest);
}

/// Whether `filter` matches the topic name `topic` (both valid), as
/// [`TopicFilter::matches`] decides, without checking the filter again.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if names.next().is_none() {
                    return false;
                }
            }
            _ => {
                if names.next() != Some(level) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}

/// Whether a `$`-topic can match one filter and not the other at the first level: a
/// filter starting with a wildcard never matches a `$`-topic ([MQTT-4.7.2-1]).
fn dollar_apart(a: &str, b: &str) -> bool {
    let wild = |f: &str| f.starts_with(['+', '#']);
    (wild(a) && b.starts_with('$')) || (wild(b) && a.starts_with('$'))
}

/// Whether every topic `filter` matches is matched by `rule` too.
pub(crate) fn covers(rule: &str, filter: &str) -> bool {
    if dollar_apart(rule, filter) {
        return false;
    }
    let (mut r, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (r.next(), f.next()) {
            // `a/#` also covers `a` itself.
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some(_), Some("#")) | (Some(_), None) | (None, Some(_)) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) => return false,
        }
    }
}

/// Whether some topic is matched by both `rule` and `filter`.
fn overlaps(rule: &str, filter: &str) -> bool {
    if dollar_apart(rule, filter) {
        return false;
    }
    let (mut r, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) => return false,
        }
    }
}

/// The filter a subscription matches topics with: a 5.0 shared subscription's part
/// after `$share/{group}/`.
pub(crate) fn topic_filter(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// Authorization by a Mosquitto ACL file.
///
/// The rules sit behind an [`ArcSwap`]: [`AclFile::reload`] replaces them at once, and
/// every check after it (each delivery included) uses the new ones.
#[derive(Debug)]
pub struct AclFile {
    path: PathBuf,
    rules: ArcSwap<Rules>,
}

impl AclFile {
    /// Reads and checks the ACL file at `path` (blocking: call it at start-up or on a
    /// blocking thread).
    ///
    /// # Errors
    /// If the file cannot be read, or a line is malformed: the error names the file,
    /// the line and the reason.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthFileError> {
        let path = path.as_ref();
        Ok(Self {
            path: path.to_owned(),
            rules: ArcSwap::from_pointee(read(path)?),
        })
    }

    /// An ACL file from its text; `path` names it in errors.
    ///
    /// # Errors
    /// As [`AclFile::load`].
    pub fn parse(text: &[u8], path: impl AsRef<Path>) -> Result<Self, AuthFileError> {
        let path = path.as_ref();
        Ok(Self {
            path: path.to_owned(),
            rules: ArcSwap::from_pointee(parse(text, path)?),
        })
    }

    /// Reads the file again and puts its rules in force at once, for every check from
    /// then on. On an error the rules in force stay as they were.
    ///
    /// # Errors
    /// As [`AclFile::load`].
    pub fn reload(&self) -> Result<(), AuthFileError> {
        self.rules.store(Arc::new(read(&self.path)?));
        Ok(())
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Authorizer for AclFile {
    fn may_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        self.rules.load().may(client, topic, WRITE)
    }

    fn may_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        self.rules
            .load()
            .may_subscribe(client, topic_filter(filter))
    }

    fn may_receive(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        self.rules.load().may(client, topic, READ)
    }

    fn filters_delivery(&self) -> bool {
        true
    }
}

fn read(path: &Path) -> Result<Rules, AuthFileError> {
    let text = std::fs::read(path).map_err(|e| AuthFileError::io(path, &e))?;
    parse(&text, path)
}

fn parse(text: &[u8], path: &Path) -> Result<Rules, AuthFileError> {
    let mut rules = Rules::default();
    let mut user: Option<String> = None;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let bad = |reason: String| AuthFileError::at(path, n, reason);
        let line = std::str::from_utf8(line)
            .map_err(|_| bad("the line is not UTF-8".to_owned()))?
            .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = split_word(line);
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(bad("`user` needs a user name".to_owned()));
                }
                user = Some(rest.to_owned());
            }
            "topic" | "pattern" => {
                let (first, after) = split_word(rest);
                if first.is_empty() {
                    return Err(bad(format!("`{keyword}` needs a topic filter")));
                }
                // One word is the filter, with read and write access (Mosquitto reads
                // `topic read` as the filter `read`, too).
                let (access, filter) = if after.is_empty() {
                    (READ | WRITE, first)
                } else {
                    let access = match first {
                        "read" => READ,
                        "write" => WRITE,
                        "readwrite" => READ | WRITE,
                        "deny" => DENY,
                        other => {
                            return Err(bad(format!(
                                "unknown access `{other}`: expected read, write, readwrite \
                                 or deny before the filter"
                            )));
                        }
                    };
                    (access, after)
                };
                if let Err(e) = TopicFilter::new(filter) {
                    return Err(bad(format!("`{filter}` is not a topic filter: {e}")));
                }
                if keyword == "pattern" {
                    if !filter.contains("%u") && !filter.contains("%c") {
                        tracing::warn!(file = %path.display(), line = n, "ACL pattern `{filter}` has neither %c nor %u: it applies to every client as it is");
                    }
                    let pattern = Pattern {
                        access,
                        template: filter.into(),
                        user: filter.contains("%u"),
                    };
                    insert(&mut rules.patterns, pattern, |p| p.access == DENY);
                } else {
                    let list = match &user {
                        Some(user) => rules.users.entry(user.clone()).or_default(),
                        None => &mut rules.anonymous,
                    };
                    let rule = Rule {
                        access,
                        filter: filter.into(),
                    };
                    insert(list, rule, |r| r.access == DENY);
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown keyword `{other}`: expected topic, pattern or user"
                )));
            }
        }
    }
    Ok(rules)
}

/// Adds a rule: a `deny` after the other denials, ahead of every grant; a grant at the
/// end.
fn insert<T>(list: &mut Vec<T>, item: T, is_deny: impl Fn(&T) -> bool) {
    if is_deny(&item) {
        let at = list.iter().position(|r| !is_deny(r)).unwrap_or(list.len());
        list.insert(at, item);
    } else {
        list.push(item);
    }
}

/// The first word of `s` and the rest, trimmed (blanks: spaces and tabs).
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find([' ', '\t']) {
        Some(at) => {
            let (word, rest) = s.split_at(at);
            (word, rest.trim())
        }
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> AclFile {
        AclFile::parse(text.as_bytes(), "acl").unwrap()
    }

    fn anon(client_id: &str) -> ClientInfo<'_> {
        ClientInfo::new(client_id, None)
    }

    fn user<'a>(name: &'a str, client_id: &'a str) -> ClientInfo<'a> {
        ClientInfo::new(client_id, Some(name))
    }

    #[test]
    fn no_rule_no_access() {
        let a = acl("# nothing\n");
        assert!(!a.may_publish(&anon("c"), "a"));
        assert!(!a.may_receive(&user("alice", "c"), "a"));
        assert!(!a.may_subscribe(&user("alice", "c"), "#"));
        assert!(a.filters_delivery());
    }

    #[test]
    fn topic_access_kinds() {
        let a = acl(concat!(
            "user alice\n",
            "topic read r/#\n",
            "topic write w/#\n",
            "topic readwrite rw/#\n",
            "topic both/#\n",
        ));
        let alice = user("alice", "c1");
        for (topic, read, write) in [
            ("r/x", true, false),
            ("w/x", false, true),
            ("rw/x", true, true),
            ("both/x/y", true, true),
            ("other", false, false),
        ] {
            assert_eq!(a.may_receive(&alice, topic), read, "{topic}");
            assert_eq!(a.may_publish(&alice, topic), write, "{topic}");
        }
        // Another user, or nobody, has none of it.
        assert!(!a.may_receive(&user("bob", "c2"), "r/x"));
        assert!(!a.may_receive(&anon("c3"), "r/x"));
    }

    #[test]
    fn the_anonymous_section_is_before_any_user() {
        let a = acl("topic read public/#\nuser alice\ntopic read alice/#\n");
        assert!(a.may_receive(&anon("c"), "public/news"));
        assert!(!a.may_receive(&anon("c"), "alice/x"));
        let alice = user("alice", "c");
        assert!(a.may_receive(&alice, "alice/x"));
        // A user's section replaces the anonymous one, as in Mosquitto.
        assert!(!a.may_receive(&alice, "public/news"));
    }

    #[test]
    fn deny_comes_first_within_a_section() {
        // The deny line after the grant still wins.
        let a = acl("user alice\ntopic readwrite home/#\ntopic deny home/secret/#\n");
        let alice = user("alice", "c");
        assert!(a.may_publish(&alice, "home/kitchen"));
        assert!(!a.may_publish(&alice, "home/secret/x"));
        assert!(!a.may_receive(&alice, "home/secret"));
        // A read-only grant matching first does not stop a later readwrite one.
        let a = acl("user alice\ntopic read a/#\ntopic readwrite a/b\n");
        assert!(a.may_publish(&user("alice", "c"), "a/b"));
        assert!(!a.may_publish(&user("alice", "c"), "a/c"));
    }

    #[test]
    fn user_sections_merge_and_names_may_have_blanks() {
        let a = acl(
            "user alice\ntopic read a\nuser bob\ntopic read b\nuser alice\ntopic read c\nuser Jane Doe\ntopic read j\n",
        );
        assert!(a.may_receive(&user("alice", "x"), "a"));
        assert!(a.may_receive(&user("alice", "x"), "c"));
        assert!(!a.may_receive(&user("alice", "x"), "b"));
        assert!(a.may_receive(&user("Jane Doe", "x"), "j"));
    }

    #[test]
    fn patterns_substitute_user_name_and_client_id() {
        let a = acl(concat!(
            "pattern readwrite users/%u/#\n",
            "pattern write devices/%c/status\n",
            "pattern read shared/%u-%c\n",
        ));
        let alice = user("alice", "sensor-1");
        assert!(a.may_publish(&alice, "users/alice/inbox"));
        assert!(!a.may_publish(&alice, "users/bob/inbox"));
        assert!(a.may_publish(&alice, "devices/sensor-1/status"));
        assert!(!a.may_receive(&alice, "devices/sensor-1/status"));
        assert!(!a.may_publish(&alice, "devices/sensor-2/status"));
        // Anywhere in a level, as Mosquitto substitutes.
        assert!(a.may_receive(&alice, "shared/alice-sensor-1"));
        // %u patterns do not apply to clients without a user name; %c ones do.
        let nobody = anon("sensor-9");
        assert!(!a.may_publish(&nobody, "users/%u/inbox"));
        assert!(a.may_publish(&nobody, "devices/sensor-9/status"));
    }

    #[test]
    fn patterns_apply_to_every_user_after_their_section() {
        let a = acl("user alice\ntopic read a/#\npattern deny a/%u\npattern read p/%u\n");
        let alice = user("alice", "c");
        // The user's grant is checked before the patterns' deny (Mosquitto's order).
        assert!(a.may_receive(&alice, "a/alice"));
        assert!(a.may_receive(&alice, "p/alice"));
        let bob = user("bob", "c");
        assert!(a.may_receive(&bob, "p/bob"));
        assert!(!a.may_receive(&bob, "a/bob"));
    }

    #[test]
    fn wildcards_in_names_and_ids_are_refused_when_patterns_exist() {
        let a = acl("topic read open\nuser a+b\ntopic read x\npattern read u/%u\n");
        assert!(!a.may_receive(&user("a+b", "c"), "u/a+b"));
        assert!(!a.may_receive(&user("a+b", "c"), "y"));
        // Its own section still applies: the check comes after it.
        assert!(a.may_receive(&user("a+b", "c"), "x"));
        assert!(!a.may_receive(&user("bob", "c#"), "u/bob"));
        assert!(a.may_receive(&user("bob", "c"), "u/bob"));
    }

    #[test]
    fn wildcard_rules_and_sys_topics() {
        let a = acl(concat!(
            "user admin\n",
            "topic read #\n",
            "user monitor\n",
            "topic read $SYS/#\n",
            "topic read +/status\n",
            "user devices\n",
            "topic write sensors/+/temperature\n",
        ));
        let admin = user("admin", "c");
        assert!(a.may_receive(&admin, "a/b/c"));
        assert!(a.may_receive(&admin, "a"));
        // `#` does not reach `$SYS`.
        assert!(!a.may_receive(&admin, "$SYS/broker/uptime"));
        let monitor = user("monitor", "c");
        assert!(a.may_receive(&monitor, "$SYS/broker/uptime"));
        assert!(a.may_receive(&monitor, "pump/status"));
        // `a/#` matches `a` too.
        assert!(a.may_receive(&monitor, "$SYS"));
        let devices = user("devices", "c");
        assert!(a.may_publish(&devices, "sensors/kitchen/temperature"));
        assert!(!a.may_publish(&devices, "sensors/kitchen/humidity"));
        assert!(!a.may_publish(&devices, "sensors/a/b/temperature"));
    }

    #[test]
    fn subscriptions_need_a_topic_they_could_read() {
        let a = acl(concat!(
            "user alice\n",
            "topic read sensors/+/temperature\n",
            "topic readwrite home/#\n",
            "topic deny home/secret/#\n",
            "topic write cmd/#\n",
            "topic read $SYS/broker/#\n",
        ));
        let alice = user("alice", "c");
        for (filter, ok) in [
            ("sensors/kitchen/temperature", true),
            ("sensors/+/temperature", true),
            // Partly readable: granted, and filtered at delivery.
            ("sensors/#", true),
            ("#", true),
            ("+/+/temperature", true),
            ("sensors/kitchen/humidity", false),
            ("home/secret/#", false),
            ("home/secret/a/b", false),
            ("home/#", true),
            // Write-only.
            ("cmd/#", false),
            ("$SYS/broker/uptime", true),
            ("$SYS/#", true),
            ("$SYS/other", false),
            // Shared subscriptions are judged by their filter.
            ("$share/g/home/x", true),
            ("$share/g/cmd/x", false),
        ] {
            assert_eq!(a.may_subscribe(&alice, filter), ok, "{filter}");
        }
        // `#` overlaps `$SYS/...` rules only if it starts with `$`.
        let a = acl("user m\ntopic read $SYS/#\n");
        assert!(!a.may_subscribe(&user("m", "c"), "#"));
        assert!(!a.may_subscribe(&user("m", "c"), "+/broker"));
        assert!(a.may_subscribe(&user("m", "c"), "$SYS/broker/+"));
        // Patterns count too.
        let a = acl("pattern read users/%u/#\n");
        assert!(a.may_subscribe(&user("bob", "c"), "users/bob/#"));
        assert!(a.may_subscribe(&user("bob", "c"), "users/+/x"));
        assert!(!a.may_subscribe(&user("bob", "c"), "users/alice/#"));
    }

    #[test]
    fn filter_relations() {
        for (rule, filter, covered, overlapping) in [
            ("a/#", "a", true, true),
            ("a/#", "a/b/c", true, true),
            ("a/+", "a/b", true, true),
            ("a/+", "a/#", false, true),
            ("a/b", "a/+", false, true),
            ("a/b", "a/c", false, false),
            ("a/b/#", "a", false, false),
            ("#", "$SYS/x", false, false),
            ("$SYS/#", "#", false, false),
            ("+/x", "+/+", false, true),
            ("a", "a/b", false, false),
            ("a/b", "a", false, false),
            ("#", "#", true, true),
        ] {
            assert_eq!(covers(rule, filter), covered, "covers({rule}, {filter})");
            assert_eq!(
                overlaps(rule, filter),
                overlapping,
                "overlaps({rule}, {filter})"
            );
        }
    }

    #[test]
    fn blanks_comments_and_one_word_topics() {
        let a = acl(concat!(
            "# comment\n",
            "   # indented comment\n",
            "\n",
            "user\talice  \r\n",
            "topic\tread   with space/x  \n",
            "topic read\n",
        ));
        let alice = user("alice", "c");
        assert!(a.may_receive(&alice, "with space/x"));
        // `topic read` is the filter `read`, read and write (as Mosquitto reads it).
        assert!(a.may_publish(&alice, "read"));
    }

    #[test]
    fn malformed_lines_are_refused_with_file_line_and_reason() {
        for (text, line, why) in [
            ("topic read a\nfoo bar\n", 2, "unknown keyword `foo`"),
            ("user\n", 1, "`user` needs a user name"),
            ("topic\n", 1, "`topic` needs a topic filter"),
            ("\n\npattern\n", 3, "`pattern` needs a topic filter"),
            ("topic sometimes a/b\n", 1, "unknown access `sometimes`"),
            ("topic read a/#/b\n", 1, "`a/#/b` is not a topic filter"),
            ("topic read a+/b\n", 1, "not a topic filter"),
            ("user a\ntopic write \u{0}x\n", 2, "not a topic filter"),
        ] {
            let err = AclFile::parse(text.as_bytes(), "/etc/mqtt/acl").unwrap_err();
            assert_eq!(err.line(), Some(line), "{text:?}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("/etc/mqtt/acl:{line}: ")), "{msg}");
            assert!(msg.contains(why), "{msg}");
        }
        let err = AclFile::parse(b"topic read a\n\xff\n", "acl").unwrap_err();
        assert_eq!(err.to_string(), "acl:2: the line is not UTF-8");
        assert!(AclFile::load("/nonexistent/acl").is_err());
    }

    #[test]
    fn reload_swaps_the_rules_or_keeps_them() {
        let dir = std::env::temp_dir().join(format!("mqtt-acl-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acl");
        std::fs::write(&path, "topic read a\n").unwrap();
        let a = AclFile::load(&path).unwrap();
        assert!(a.may_receive(&anon("c"), "a"));
        std::fs::write(&path, "topic read b\n").unwrap();
        a.reload().unwrap();
        assert!(!a.may_receive(&anon("c"), "a"));
        assert!(a.may_receive(&anon("c"), "b"));
        std::fs::write(&path, "topic maybe b\n").unwrap();
        assert!(a.reload().is_err());
        assert!(a.may_receive(&anon("c"), "b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
