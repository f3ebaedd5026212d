//! Bindings of one exchange and the index its kind routes by: a hash map for
//! direct, the list for fanout, a trie of words for topic (so a publish
//! touches only the branches its words can match, RabbitMQ's design), and
//! parsed matchers for headers.

use std::collections::{HashMap, HashSet};

use super::{Arguments, DelayedRouting, ExchangeKind, FieldValue, argument};

/// Where a binding sends messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dest {
    Queue(String),
    Exchange(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Binding {
    pub dest: Dest,
    pub key: String,
    pub args: Arguments,
}

/// The routing an exchange kind applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routing {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl Routing {
    pub fn of(kind: ExchangeKind) -> Routing {
        match kind {
            ExchangeKind::Direct | ExchangeKind::Delayed(DelayedRouting::Direct) => Routing::Direct,
            ExchangeKind::Fanout | ExchangeKind::Delayed(DelayedRouting::Fanout) => Routing::Fanout,
            ExchangeKind::Topic | ExchangeKind::Delayed(DelayedRouting::Topic) => Routing::Topic,
            ExchangeKind::Headers | ExchangeKind::Delayed(DelayedRouting::Headers) => {
                Routing::Headers
            }
        }
    }
}

#[derive(Debug)]
enum Index {
    Direct(HashMap<String, Vec<Dest>>),
    Fanout,
    Topic(TopicNode),
    Headers(Vec<(HeadersMatch, Dest)>),
}

/// Every binding of one exchange, indexed for its kind.
#[derive(Debug)]
pub(crate) struct Bindings {
    all: Vec<Binding>,
    index: Index,
}

impl Bindings {
    pub fn new(routing: Routing) -> Bindings {
        Bindings {
            all: Vec::new(),
            index: match routing {
                Routing::Direct => Index::Direct(HashMap::new()),
                Routing::Fanout => Index::Fanout,
                Routing::Topic => Index::Topic(TopicNode::default()),
                Routing::Headers => Index::Headers(Vec::new()),
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Every binding, in the order they were made (for listings).
    pub fn all(&self) -> &[Binding] {
        &self.all
    }

    pub fn contains(&self, b: &Binding) -> bool {
        self.all.contains(b)
    }

    /// Adds a binding; false if it was there already (a re-bind is a no-op).
    pub fn add(&mut self, b: Binding) -> bool {
        if self.all.contains(&b) {
            return false;
        }
        match &mut self.index {
            Index::Direct(map) => map.entry(b.key.clone()).or_default().push(b.dest.clone()),
            Index::Fanout => {}
            Index::Topic(root) => root.insert(&split_words(&b.key), b.dest.clone()),
            Index::Headers(list) => list.push((HeadersMatch::parse(&b.args), b.dest.clone())),
        }
        self.all.push(b);
        true
    }

    /// Removes a binding; false if there was no such binding.
    pub fn remove(&mut self, b: &Binding) -> bool {
        let Some(pos) = self.all.iter().position(|x| x == b) else {
            return false;
        };
        self.all.remove(pos);
        match &mut self.index {
            Index::Direct(map) => {
                if let Some(v) = map.get_mut(&b.key) {
                    if let Some(i) = v.iter().position(|d| *d == b.dest) {
                        v.swap_remove(i);
                    }
                    if v.is_empty() {
                        map.remove(&b.key);
                    }
                }
            }
            Index::Fanout => {}
            Index::Topic(root) => {
                root.remove(&split_words(&b.key), &b.dest);
            }
            Index::Headers(list) => {
                let m = HeadersMatch::parse(&b.args);
                if let Some(i) = list.iter().position(|(hm, d)| *d == b.dest && *hm == m) {
                    list.remove(i);
                }
            }
        }
        true
    }

    /// Removes every binding to `dest`; returns how many.
    pub fn remove_dest(&mut self, dest: &Dest) -> usize {
        let doomed: Vec<Binding> = self
            .all
            .iter()
            .filter(|b| b.dest == *dest)
            .cloned()
            .collect();
        for b in &doomed {
            self.remove(b);
        }
        doomed.len()
    }

    /// Adds to `out` every destination that a message with `key` and
    /// `headers` matches (possibly with repeats).
    pub fn route<'a>(
        &'a self,
        key: &str,
        headers: &[(String, FieldValue)],
        out: &mut Vec<&'a Dest>,
    ) {
        match &self.index {
            Index::Direct(map) => {
                if let Some(v) = map.get(key) {
                    out.extend(v.iter());
                }
            }
            Index::Fanout => out.extend(self.all.iter().map(|b| &b.dest)),
            Index::Topic(root) => {
                let words = split_words(key);
                let mut visited = HashSet::new();
                root.collect(&words, 0, out, &mut visited);
            }
            Index::Headers(list) => {
                for (m, d) in list {
                    if m.matches(headers) {
                        out.push(d);
                    }
                }
            }
        }
    }
}

/// A topic routing or binding key as words: RabbitMQ splits on `.` and
/// treats the empty key as no words at all (so `#` matches it and `*` does
/// not); other empty words count.
pub(crate) fn split_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

#[derive(Debug, Default)]
struct TopicNode {
    children: HashMap<String, TopicNode>,
    star: Option<Box<TopicNode>>,
    hash: Option<Box<TopicNode>>,
    dests: Vec<Dest>,
}

impl TopicNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.dests.is_empty()
    }

    fn insert(&mut self, words: &[&str], dest: Dest) {
        let Some((first, rest)) = words.split_first() else {
            self.dests.push(dest);
            return;
        };
        let child = match *first {
            "*" => self.star.get_or_insert_with(Box::default).as_mut(),
            "#" => self.hash.get_or_insert_with(Box::default).as_mut(),
            w => self.children.entry(w.to_string()).or_default(),
        };
        child.insert(rest, dest);
    }

    /// Removes one `dest` at `words`, pruning branches left empty.
    fn remove(&mut self, words: &[&str], dest: &Dest) {
        let Some((first, rest)) = words.split_first() else {
            if let Some(i) = self.dests.iter().position(|d| d == dest) {
                self.dests.swap_remove(i);
            }
            return;
        };
        match *first {
            "*" => {
                if let Some(c) = self.star.as_mut() {
                    c.remove(rest, dest);
                    if c.is_empty() {
                        self.star = None;
                    }
                }
            }
            "#" => {
                if let Some(c) = self.hash.as_mut() {
                    c.remove(rest, dest);
                    if c.is_empty() {
                        self.hash = None;
                    }
                }
            }
            w => {
                if let Some(c) = self.children.get_mut(w) {
                    c.remove(rest, dest);
                    if c.is_empty() {
                        self.children.remove(w);
                    }
                }
            }
        }
    }

    /// Collects the destinations of every pattern matching `words[i..]`.
    /// `visited` holds (node, position) pairs already explored, which keeps
    /// patterns with several `#` polynomial.
    fn collect<'a>(
        &'a self,
        words: &[&str],
        i: usize,
        out: &mut Vec<&'a Dest>,
        visited: &mut HashSet<(usize, usize)>,
    ) {
        if !visited.insert((self as *const TopicNode as usize, i)) {
            return;
        }
        if i == words.len() {
            out.extend(self.dests.iter());
        } else {
            if let Some(c) = self.children.get(words[i]) {
                c.collect(words, i + 1, out, visited);
            }
            if let Some(c) = &self.star {
                c.collect(words, i + 1, out, visited);
            }
        }
        if let Some(h) = &self.hash {
            // `#` takes zero or more words.
            for j in i..=words.len() {
                h.collect(words, j, out, visited);
            }
        }
    }
}

/// A headers-exchange binding, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeadersMatch {
    any: bool,
    /// The binding's arguments that take part, sorted by key.
    args: Vec<(String, FieldValue)>,
}

impl HeadersMatch {
    pub fn parse(args: &Arguments) -> HeadersMatch {
        let mode = match argument(args, "x-match") {
            Some(FieldValue::Str(s)) => String::from_utf8_lossy(s).into_owned(),
            _ => "all".to_string(),
        };
        let (any, with_x) = match mode.as_str() {
            "any" => (true, false),
            "all-with-x" => (false, true),
            "any-with-x" => (true, true),
            _ => (false, false),
        };
        let mut taking: Vec<(String, FieldValue)> = args
            .iter()
            .filter(|(k, _)| k != "x-match" && (with_x || !k.starts_with("x-")))
            .cloned()
            .collect();
        taking.sort_by(|a, b| a.0.cmp(&b.0));
        HeadersMatch { any, args: taking }
    }

    /// RabbitMQ's `headers_match`: a void binding value asks only that the
    /// header be present; other values must be equal, type included. `all`
    /// with no arguments matches everything, `any` with none matches nothing.
    pub fn matches(&self, headers: &[(String, FieldValue)]) -> bool {
        let one = |(k, v): &(String, FieldValue)| {
            headers
                .iter()
                .find(|(hk, _)| hk == k)
                .is_some_and(|(_, hv)| matches!(v, FieldValue::Void) || hv == v)
        };
        if self.any {
            self.args.iter().any(one)
        } else {
            self.args.iter().all(one)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn q(name: &str) -> Dest {
        Dest::Queue(name.to_string())
    }

    fn bind(b: &mut Bindings, key: &str, dest: &str) {
        b.add(Binding {
            dest: q(dest),
            key: key.to_string(),
            args: Vec::new(),
        });
    }

    fn routed(b: &Bindings, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        b.route(key, &[], &mut out);
        let mut names: Vec<String> = out
            .into_iter()
            .map(|d| match d {
                Dest::Queue(n) | Dest::Exchange(n) => n.clone(),
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        let mut b = Bindings::new(Routing::Topic);
        for (pattern, dest) in [
            ("#", "hash"),
            ("a.*", "a_star"),
            ("a.#", "a_hash"),
            ("a.#.b", "a_hash_b"),
            ("*.b", "star_b"),
            ("a.b", "ab"),
            ("*", "star"),
            ("", "empty"),
            ("a..b", "a_empty_b"),
            ("#.#", "hash_hash"),
            ("*.*.*", "three"),
        ] {
            bind(&mut b, pattern, dest);
        }
        assert_eq!(
            routed(&b, "a.b"),
            [
                "a_hash",
                "a_hash_b",
                "a_star",
                "ab",
                "hash",
                "hash_hash",
                "star_b"
            ]
        );
        assert_eq!(routed(&b, ""), ["empty", "hash", "hash_hash"]);
        assert_eq!(routed(&b, "a"), ["a_hash", "hash", "hash_hash", "star"]);
        assert_eq!(
            routed(&b, "a.x.y.b"),
            ["a_hash", "a_hash_b", "hash", "hash_hash"]
        );
        assert_eq!(
            routed(&b, "a..b"),
            [
                "a_empty_b",
                "a_hash",
                "a_hash_b",
                "hash",
                "hash_hash",
                "three"
            ]
        );
        assert_eq!(routed(&b, "a."), ["a_hash", "a_star", "hash", "hash_hash"]);
        assert_eq!(routed(&b, "x.y.z"), ["hash", "hash_hash", "three"]);
        // Unbinding prunes the trie and stops matches.
        b.remove(&Binding {
            dest: q("a_hash_b"),
            key: "a.#.b".into(),
            args: vec![],
        });
        assert_eq!(routed(&b, "a.x.y.b"), ["a_hash", "hash", "hash_hash"]);
    }

    #[test]
    fn many_hashes_stay_fast() {
        let mut b = Bindings::new(Routing::Topic);
        bind(&mut b, "#.#.#.#.#.#.#.#.#.#.z", "q");
        let key = vec!["a"; 200].join(".");
        assert!(routed(&b, &key).is_empty());
        assert_eq!(routed(&b, &(key + ".z")), ["q"]);
    }

    #[test]
    fn direct_and_fanout() {
        let mut d = Bindings::new(Routing::Direct);
        bind(&mut d, "k", "q1");
        bind(&mut d, "k", "q2");
        bind(&mut d, "other", "q3");
        assert_eq!(routed(&d, "k"), ["q1", "q2"]);
        assert!(routed(&d, "K").is_empty());
        let mut f = Bindings::new(Routing::Fanout);
        bind(&mut f, "x", "q1");
        bind(&mut f, "y", "q2");
        assert_eq!(routed(&f, "anything"), ["q1", "q2"]);
        assert_eq!(f.remove_dest(&q("q1")), 1);
        assert_eq!(routed(&f, "anything"), ["q2"]);
    }

    fn s(v: &str) -> FieldValue {
        FieldValue::Str(Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn headers_x_match_variants() {
        let h = |pairs: &[(&str, FieldValue)]| -> Vec<(String, FieldValue)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        let all = HeadersMatch::parse(&h(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]));
        let any = HeadersMatch::parse(&h(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]));
        let msg = h(&[("format", s("pdf")), ("type", s("log"))]);
        assert!(!all.matches(&msg));
        assert!(any.matches(&msg));
        assert!(all.matches(&h(&[("type", s("report")), ("format", s("pdf"))])));
        // Typed equality: the integer 1 is not the string "1".
        let int = HeadersMatch::parse(&h(&[("n", FieldValue::Int(1))]));
        assert!(int.matches(&h(&[("n", FieldValue::Int(1))])));
        assert!(!int.matches(&h(&[("n", s("1"))])));
        // Void: presence only.
        let present = HeadersMatch::parse(&h(&[("k", FieldValue::Void)]));
        assert!(present.matches(&h(&[("k", s("whatever"))])));
        assert!(!present.matches(&[]));
        // x- keys are ignored unless -with-x.
        let plain = HeadersMatch::parse(&h(&[("x-k", s("v"))]));
        assert!(plain.matches(&[]));
        let any_plain = HeadersMatch::parse(&h(&[("x-match", s("any")), ("x-k", s("v"))]));
        assert!(!any_plain.matches(&h(&[("x-k", s("v"))])));
        let with_x = HeadersMatch::parse(&h(&[("x-match", s("all-with-x")), ("x-k", s("v"))]));
        assert!(with_x.matches(&h(&[("x-k", s("v"))])));
        assert!(!with_x.matches(&[]));
        let any_x = HeadersMatch::parse(&h(&[
            ("x-match", s("any-with-x")),
            ("x-k", s("v")),
            ("a", s("b")),
        ]));
        assert!(any_x.matches(&h(&[("x-k", s("v"))])));
        assert!(!any_x.matches(&h(&[("x-k", s("w"))])));
    }
}
