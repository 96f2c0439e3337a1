//! containerd filter expressions (`github.com/containerd/containerd/filters`)
//! over snapshot `Info`.
//!
//! Grammar: `selector (',' selector)*`, where a selector is a field path
//! (`name`, `parent`, `kind`, `labels."key"`; fields joined by `.`, each an
//! identifier or a quoted string) optionally followed by an operator (`==`,
//! `!=`, `~=` regular expression) and a value (quoted, or bare up to the next
//! `,` or space). `,` means AND; the request's list of filters means OR. A
//! selector without operator tests that the field is present. As in
//! containerd, `!=` and `~=` compare against "" when the field is absent.

use regex::Regex;

use crate::model::{Error, Info, Result};

/// One parsed filter: every selector must match.
#[derive(Debug)]
pub struct Filter {
    selectors: Vec<Selector>,
}

#[derive(Debug)]
struct Selector {
    fieldpath: Vec<String>,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// Matches if any filter matches; an empty list matches everything.
#[derive(Debug, Default)]
pub struct AnyOf(Vec<Filter>);

impl AnyOf {
    /// Parses the request's filter strings; empty strings are ignored.
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<AnyOf> {
        let parsed = filters
            .iter()
            .map(AsRef::as_ref)
            .filter(|f| !f.trim().is_empty())
            .map(Filter::parse)
            .collect::<Result<Vec<_>>>()?;
        Ok(AnyOf(parsed))
    }

    /// Whether `info` passes.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(info))
    }
}

impl Filter {
    /// Parses one filter expression.
    pub fn parse(input: &str) -> Result<Filter> {
        let mut p = Parser {
            input,
            chars: input.char_indices().collect(),
            pos: 0,
        };
        let mut selectors = vec![p.selector()?];
        loop {
            p.skip_space();
            match p.peek() {
                None => break,
                Some(',') => {
                    p.pos += 1;
                    selectors.push(p.selector()?);
                }
                Some(c) => return Err(p.error(&format!("unexpected {c:?}"))),
            }
        }
        Ok(Filter { selectors })
    }

    /// Whether every selector matches `info`.
    pub fn matches(&self, info: &Info) -> bool {
        self.selectors.iter().all(|s| s.matches(info))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let field = field(info, &self.fieldpath);
        match &self.op {
            Op::Present => field.is_some(),
            Op::Equal(v) => field.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => field.as_deref().unwrap_or("") != v,
            Op::Matches(re) => re.is_match(field.as_deref().unwrap_or("")),
        }
    }
}

/// containerd's snapshot filter adaptor.
fn field(info: &Info, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "name" => Some(info.name.clone()),
        "parent" => Some(info.parent.clone()),
        "kind" => Some(info.kind.as_str().to_string()),
        "labels" if !rest.is_empty() => info.labels.get(&rest.join(".")).cloned(),
        _ => None,
    }
}

struct Parser<'a> {
    input: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> Error {
        let at = self.chars.get(self.pos).map_or(self.input.len(), |c| c.0);
        Error::InvalidArgument(format!("filter {:?}: {what} at offset {at}", self.input))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|c| c.1)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut fieldpath = vec![self.field()?];
        while self.peek() == Some('.') {
            self.pos += 1;
            fieldpath.push(self.field()?);
        }
        self.skip_space();
        let op = match (self.peek(), self.chars.get(self.pos + 1).map(|c| c.1)) {
            (Some(o @ ('=' | '!' | '~')), Some('=')) => {
                self.pos += 2;
                self.skip_space();
                let value = self.value()?;
                match o {
                    '=' => Op::Equal(value),
                    '!' => Op::NotEqual(value),
                    _ => Op::Matches(
                        Regex::new(&value).map_err(|e| self.error(&format!("bad regexp: {e}")))?,
                    ),
                }
            }
            (None | Some(','), _) => Op::Present,
            (Some(c), _) => return Err(self.error(&format!("unexpected {c:?}"))),
        };
        Ok(Selector { fieldpath, op })
    }

    fn field(&mut self) -> Result<String> {
        self.skip_space();
        match self.peek() {
            Some(q @ ('"' | '`' | '/')) => self.quoted(q),
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                if start == self.pos {
                    return Err(self.error("expected a field name"));
                }
                Ok(self.chars[start..self.pos].iter().map(|c| c.1).collect())
            }
        }
    }

    fn value(&mut self) -> Result<String> {
        match self.peek() {
            Some(q @ ('"' | '`' | '/')) => self.quoted(q),
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != ',' && !c.is_whitespace()) {
                    self.pos += 1;
                }
                if start == self.pos {
                    return Err(self.error("expected a value"));
                }
                Ok(self.chars[start..self.pos].iter().map(|c| c.1).collect())
            }
        }
    }

    /// A string between `quote` characters; backslash escapes the quote,
    /// itself and the usual `\n \t \r`.
    fn quoted(&mut self, quote: char) -> Result<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated quoted string")),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') if quote != '`' => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or_else(|| self.error("dangling escape"))?;
                    match escaped {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        c if c == quote || c == '\\' => out.push(c),
                        // Keep unknown escapes verbatim: regexps need them.
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    }
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Kind;
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn m(filter: &str, i: &Info) -> bool {
        match AnyOf::parse(&[filter]) {
            Ok(f) => f.matches(i),
            Err(e) => panic!("{filter}: {e}"),
        }
    }

    #[test]
    fn fields_and_operators() {
        let i = info(
            "a",
            "p",
            Kind::Active,
            &[("containerd.io/gc.ref", "x"), ("k", "v1")],
        );
        assert!(m("name==a", &i));
        assert!(!m("name==b", &i));
        assert!(m("parent==p", &i));
        assert!(m("kind==active", &i));
        assert!(m("kind!=committed", &i));
        assert!(m(r#"labels."containerd.io/gc.ref"==x"#, &i));
        assert!(m("labels.k~=^v[0-9]$", &i));
        assert!(!m("labels.k~=^w", &i));
        assert!(m("labels.k", &i));
        assert!(!m("labels.missing", &i));
        assert!(m("labels.missing!=v", &i));
        assert!(m(r#"name==a, labels.k=="v1""#, &i));
        assert!(!m("name==a,labels.k==v2", &i));
        assert!(m("labels.k~=/v\\d/", &i) || m("labels.k~=\"v\\\\d\"", &i));
    }

    #[test]
    fn any_of_is_or_and_empty_matches_all() {
        let i = info("a", "", Kind::View, &[]);
        let Ok(f) = AnyOf::parse(&["name==x", "kind==view"]) else {
            panic!("parse")
        };
        assert!(f.matches(&i));
        let Ok(all) = AnyOf::parse::<&str>(&[]) else {
            panic!("parse")
        };
        assert!(all.matches(&i));
    }

    #[test]
    fn bad_filters_are_invalid_argument() {
        for bad in [
            "name==",
            "==a",
            "name==\"a",
            "name=a",
            "labels.k~=(",
            "name==a,",
        ] {
            assert!(
                matches!(Filter::parse(bad), Err(Error::InvalidArgument(_))),
                "{bad} should fail"
            );
        }
    }
}
